"""Units of the "told why" paths: which refused tunnels are answered inside (and the budget of
new leaves a hostile agent can make greyproxy sign), and the in-memory unanswered keys."""

from __future__ import annotations

import time

from greyproxy.ca.state import MitmState
from greyproxy.events import Bus
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.proxy import hold as hold_module
from greyproxy.proxy.hold import HoldManager
from greyproxy.proxy.mitm import refusal


def mitm_state(tmp_path, **kw) -> MitmState:
    state = MitmState(tmp_path, Bus(), enabled=True, **kw)
    assert state.ensure() is True and state.leaves is not None
    return state


def test_first_start_generates_once_and_never_overwrites(tmp_path):
    state = mitm_state(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    cert = (tmp_path / "ca-cert.pem").read_bytes()
    assert MitmState(tmp_path, Bus(), enabled=True).ensure() is False
    assert (tmp_path / "ca-cert.pem").read_bytes() == cert
    (tmp_path / "ca-cert.pem").unlink()  # a lone key is left for `cert generate --force`
    lone = MitmState(tmp_path, Bus(), enabled=True)
    assert lone.ensure() is False and lone.ca is None
    assert state.ca is not None


def test_in_band_only_where_interception_could_happen(tmp_path):
    state = mitm_state(tmp_path, bypass=["bypassed.example"])
    assert refusal.in_band(state, "ok.example", "denied_by_rule", "unit-a")
    assert not refusal.in_band(state, "bypassed.example", "denied_by_rule", "unit-a")
    for reason in ("client_gone", "shutting_down", "bad_destination"):
        assert not refusal.in_band(state, "ok.example", reason, "unit-a")
    state.enabled = False
    assert not refusal.in_band(state, "ok.example", "denied_by_rule", "unit-a")


def test_new_leaves_for_refusals_are_budgeted_per_container(tmp_path):
    state = mitm_state(tmp_path)
    burst = refusal.MINTS_PER_CONTAINER.requests_burst
    told = [refusal.in_band(state, f"n{i}.example", "denied_by_rule", "unit-flood") for i in range(burst + 5)]
    assert told[:burst] == [True] * burst and not any(told[burst:])
    # A name whose leaf is ready costs nothing: still told; another container has its own budget.
    state.leaves.context_for("ready.example")
    assert refusal.in_band(state, "ready.example", "denied_by_rule", "unit-flood")
    assert refusal.in_band(state, "fresh.example", "denied_by_rule", "unit-other")


def test_leaf_name_uses_the_sni_only_for_a_raw_ip():
    assert refusal.leaf_name("blocked.example", "other.example") == "blocked.example"
    assert refusal.leaf_name("93.184.216.34", "example.com") == "example.com"
    assert refusal.leaf_name("93.184.216.34", None) == "93.184.216.34"


def holds(verdict: Verdict = Verdict.HOLD) -> tuple[HoldManager, list[Verdict]]:
    current = [verdict]
    return HoldManager(Bus(), lambda _r: Decision(current[0], "x")), current


REQ = ConnectionRequest(container="c", host="h.example", port=443)


def test_timed_out_key_fails_fast_until_decided():
    manager, current = holds()
    assert manager.hold(REQ, 0.05, None, 60).reason == "pending_timeout"
    started = time.monotonic()
    assert manager.hold(REQ, 5, None, 60).reason == "pending_unanswered"
    assert time.monotonic() - started < 0.1
    other = ConnectionRequest(container="c", host="h.example", port=8443)
    assert manager.hold(other, 0.05, None, 60).reason == "pending_timeout"  # a key is exact
    manager.forget(("c", "h.example", 443))
    assert manager.hold(REQ, 0.05, None, 60).reason == "pending_timeout"


def test_zero_seconds_remembers_nothing_and_expiry_ends_it():
    manager, _ = holds()
    assert manager.hold(REQ, 0.05, None, 0).reason == "pending_timeout"
    assert manager.hold(REQ, 0.05, None, 0).reason == "pending_timeout"
    assert manager.hold(REQ, 0.05, None, 0.2).reason == "pending_timeout"
    assert manager.hold(REQ, 0.05, None, 0.2).reason == "pending_unanswered"
    time.sleep(0.25)
    assert manager.hold(REQ, 0.05, None, 0.2).reason == "pending_timeout"


def test_dismiss_forgets_and_memory_is_bounded(monkeypatch):
    manager, _ = holds()
    manager.hold(REQ, 0.05, None, 60)
    manager.dismiss("c", ["h.example"], 443)
    assert not manager.unanswered(("c", "h.example", 443))
    monkeypatch.setattr(hold_module, "UNANSWERED_MAX", 3)
    for i in range(5):
        manager.hold(ConnectionRequest(container="c", host=f"k{i}.example", port=1), 0.01, None, 60)
    assert len(manager._unanswered) == 3
    assert not manager.unanswered(("c", "k0.example", 1)) and manager.unanswered(("c", "k4.example", 1))
