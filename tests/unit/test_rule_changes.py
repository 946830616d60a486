"""Issue 13: RuleService tells the runtime what changed (a RuleChange), so the index is patched
instead of rebuilt; a rolled-back insert never reaches the index."""

from __future__ import annotations

import datetime as dt

import pytest

from greyproxy.events import Bus
from greyproxy.services.policy_state import PolicyHolder, RuleChange
from greyproxy.services.rules import NewRule, RuleService
from greyproxy.timeutil import epoch
from tests.backends import backend_db  # noqa: F401 - `db`: a migrated store, SQLite and PostgreSQL


def new(host: str, session_id: str | None = None) -> NewRule:
    return NewRule(container_pattern="agent1", destination_pattern=host, port_pattern="443", action="allow",
                   session_id=session_id)


def service(db) -> tuple[RuleService, list[RuleChange], PolicyHolder]:
    seen: list[RuleChange] = []
    holder = PolicyHolder()

    def apply(change: RuleChange) -> None:
        seen.append(change)
        if change.full:
            holder.rebuild(rules.all_specs, lambda: (None, (), None, frozenset()))
        else:
            holder.apply(change)

    rules = RuleService(db, Bus(), apply)
    return rules, seen, holder


def test_writes_hand_over_what_changed(db):
    rules, seen, holder = service(db)
    rule, created = rules.create(new("a.example"))
    assert created and seen[-1].added[0].id == rule.id and not seen[-1].full
    assert holder.state.index.match("agent1", "a.example", 443) is not None
    rules.update(rule.id, {"action": "deny"})
    assert seen[-1].added[0].action == "deny" and holder.rule(rule.id).action == "deny"
    assert rules.delete(rule.id)
    assert seen[-1] == RuleChange(removed=(rule.id,))
    assert holder.state.index.match("agent1", "a.example", 443) is None
    assert holder.rebuilds == 0 and holder.patches == 3


def test_a_rolled_back_insert_never_reaches_the_index(db):
    rules, seen, holder = service(db)
    with pytest.raises(RuntimeError), db.atomic():
        ghost, _ = rules._insert(new("ghost.example"), dt.datetime(2026, 1, 1))
        raise RuntimeError("the caller's transaction fails")
    kept, _ = rules.create(new("kept.example"))
    change = seen[-1]
    assert [s.id for s in change.added] == [kept.id]
    assert ghost.id in change.removed or ghost.id == kept.id  # SQLite may hand the id out again
    assert holder.state.index.match("agent1", "ghost.example", 443) is None
    assert holder.state.index.match("agent1", "kept.example", 443) is not None


def test_heartbeat_extension_and_ingest(db):
    rules, seen, holder = service(db)
    assert rules.set_session_rules("s1", [new("s.example", "s1")]) == 1
    later = dt.datetime(2030, 1, 1)
    rules.extend_session_rules("s1", later)
    assert seen[-1] == RuleChange(extend_session=("s1", epoch(later)))
    assert holder.session_extensions == 1 and holder.rebuilds == 0
    assert [r.expires_at for r in holder.state.index.rules()] == [epoch(later)]
    rules.ingest([new(f"i{i}.example") for i in range(5)])
    assert seen[-1].full and holder.rebuilds == 1 and len(holder.state.index) == len(rules.all_specs())


def test_a_patch_applied_while_a_rebuild_reads_the_store_is_not_lost():
    """The rebuild's read and index build yield (they run off the hub): a rule patched in
    meanwhile is replayed onto the new index instead of vanishing with the old one."""
    import gevent

    from greyproxy.policy.index import RuleSpec

    holder = PolicyHolder()
    old = RuleSpec(id=1, container_pattern="*", destination_pattern="old.example", port_pattern="443", action="allow")
    late = RuleSpec(id=2, container_pattern="*", destination_pattern="late.example", port_pattern="443",
                    action="allow")

    def load() -> list[RuleSpec]:
        gevent.sleep(0.05)  # the store read yields; the patch below lands meanwhile
        return [old]

    patcher = gevent.spawn_later(0.01, holder.apply, RuleChange(added=(late,)))
    holder.rebuild(load, lambda: (None, (), None, frozenset()))
    patcher.join()
    assert holder.rule(1) == old and holder.rule(2) == late


def test_an_older_rebuild_finishing_last_does_not_undo_a_newer_one():
    """Two rebuilds overlap (a fleet resync and an ingest): the one that read the store first
    finishes last. Its index lacks what the newer read found and must not replace it."""
    import gevent

    from greyproxy.policy.index import RuleSpec

    holder = PolicyHolder()
    ingested = RuleSpec(id=7, container_pattern="*", destination_pattern="ingested.example", port_pattern="443",
                        action="deny")

    def slow_old_read() -> list[RuleSpec]:
        gevent.sleep(0.1)
        return []  # read before the ingest committed

    def new_read() -> list[RuleSpec]:
        return [ingested]

    older = gevent.spawn(holder.rebuild, slow_old_read, lambda: (None, (), None, frozenset()))
    gevent.sleep(0.01)
    holder.rebuild(new_read, lambda: (None, (), None, frozenset()))
    assert holder.rule(7) == ingested
    older.join()
    assert holder.rule(7) == ingested, "the older rebuild swapped in an index without the ingested deny rule"


def test_a_patch_applied_while_the_small_parts_are_read_is_not_lost():
    """The rebuild reads silent mode, container modes and sessions last. Were that read to yield
    after the journal closed, a rule patched meanwhile would land on the index being replaced
    (CI: a rule created as the fleet link first resynced stayed missing)."""
    import gevent

    from greyproxy.policy.index import RuleSpec

    holder = PolicyHolder()
    late = RuleSpec(id=2, container_pattern="*", destination_pattern="late.example", port_pattern="443",
                    action="allow")

    def slow_extras():
        gevent.sleep(0.05)
        return (None, (), None, frozenset())

    patcher = gevent.spawn_later(0.01, holder.apply, RuleChange(added=(late,)))
    holder.rebuild(lambda: [], slow_extras)
    patcher.join()
    assert holder.rule(2) == late


def test_the_runtime_reads_the_policy_small_parts_from_memory(tmp_path):
    """The runtime's small parts (container modes above all) are read without a database
    round trip, so a rebuild swaps its index in without yielding; a mode set through the
    service is in them at once."""
    import gevent

    from greyproxy.config import load_config
    from greyproxy.runtime import Runtime

    runtime = Runtime(load_config(None, env={"HOME": str(tmp_path)}, flags={"data_dir": str(tmp_path)}))
    try:
        runtime.modes.set("agent-*", "report")
        switched = []
        gevent.spawn(switched.append, True)  # runs only if the read below yields to the hub
        _silent, modes, _sessions, _allow_all = runtime._policy_extras()  # noqa: SLF001
        assert not switched
        assert [(m.container_pattern, m.mode) for m in modes] == [("agent-*", "report")]
        assert runtime.policy.state.modes == modes
    finally:
        runtime.db.close()
