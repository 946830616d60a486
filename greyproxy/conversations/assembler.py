"""Conversations from captured LLM traffic, assembled in the background.

The store writer wakes the assembler after each batch of transactions; half a second later
(debounce) it reads the transactions past its cursor, picks a decoder for each by the endpoint
rules (an unmatched POST that looks like a chat call gets a rule of its own), dissects
it, and files it under a conversation: the provider's session id when the request carries one,
else the same container's latest conversation with that provider and the same thread (the
first prompt, which every call of a conversation repeats, for APIs whose requests carry the
whole history) if it was active in the last 5 minutes, else a new `heuristic_<transaction id>`.
Two conversations of one container a second apart are two threads, never merged into one
(which would keep only the longer history and lose the other). Each conversation it touched is then rebuilt
whole from all its transactions: turns come from the longest message history among them (the
latest request repeats the whole exchange), and each transaction counts as an API call in the
turn its history had reached.

OpenAI Responses over WebSocket (`openai-ws`): each client frame `response.create` is a call
(found by the endpoint rules, or by its content on any host), and the final `response.*` frame
the server sends back on the same socket is its answer (deltas are skipped). A call that only
carries what is new (`previous_response_id`) makes the conversation's history the concatenation
of its calls rather than the longest one.

A session (calls sharing a session id) is split into threads by first prompt. The main thread
is the one whose tool calls started others (a `prompt` input, e.g. Claude Code's Task tool, that
the other thread's first prompt holds), else the busiest; the others are stored as
conversations of their own, `<session>/subagent_<n>` when the main thread started them (its tool
call gets `linked_conversation_id`) and `<session>/thread_<n>` otherwise (title generation and
other side calls), with `parent_conversation_id`; the parent lists them in `linked_subagents`.
Nothing of a session is dropped: each thread keeps its own turns.

`client_name` says which agent made the calls (conversations/adapters.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import peewee
from peewee import Case, fn

from greyproxy.capture.har import ws_key
from greyproxy.conversations.adapters import detect_client
from greyproxy.conversations.dissect import Dissected, Message, dissect, ws_response
from greyproxy.conversations.endpoints import BUILTIN_RULES, EndpointRule, auto_rule, first_match, ordered
from greyproxy.events import Bus
from greyproxy.store.locks import CONVERSATIONS, try_lock, xact_lock
from greyproxy.store.models import (
    Conversation,
    ConversationProcessingState,
    EndpointRuleRow,
    HttpTransaction,
    Turn,
)
from greyproxy.timeutil import utcnow

log = logging.getLogger("greyproxy.conversations")

ASSEMBLER_VERSION = "5"  # a stored version that differs rebuilds everything at start
# Decoders whose every request repeats the conversation so far: their first prompt names the thread.
FULL_HISTORY = frozenset({"anthropic", "openai-chat", "google-ai"})
DEBOUNCE_SECONDS = 0.5
BATCH = 200
GAP = dt.timedelta(minutes=5)
PREVIEW = 500  # characters of a tool input or result kept on a step
PROMPT_TITLE = 200
WS_METHODS = ("WS_REQ", "WS_RESP")
WS_MARK = '"response.'  # in every Responses API WebSocket event worth reading (`"type": "response.…"`)
HEAD_COLUMNS = (HttpTransaction.id, HttpTransaction.timestamp, HttpTransaction.container_name,
                HttpTransaction.destination_host, HttpTransaction.destination_port, HttpTransaction.method,
                HttpTransaction.url, HttpTransaction.request_content_type)


def _head_columns() -> tuple[Any, ...]:
    """The heads read for every new transaction, and for frames only whether the payload may be
    a Responses event (computed by the database, so the payloads of all the WebSocket frames
    captured are not loaded to look at them)."""
    body = HttpTransaction.request_body
    db = HttpTransaction._meta.database
    if isinstance(getattr(db, "obj", db), peewee.PostgresqlDatabase):  # bound, or through the proxy
        found = fn.STRPOS(fn.ENCODE(body, "escape"), WS_MARK)  # bytea: as text first
    else:
        found = fn.INSTR(body, WS_MARK)
    return (*HEAD_COLUMNS, Case(None, [(HttpTransaction.method.in_(WS_METHODS), found)], 0).alias("ws_hint"))


def _text(body: bytes | str | None) -> str | None:
    if body is None:
        return None
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body


def _cut(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Call:
    """One captured API call and what the dissector made of it."""

    row: HttpTransaction
    dissected: Dissected
    offset: int = 0  # prompts of earlier calls, when each call carries only what is new

    @property
    def prompts(self) -> int:
        """How many user prompts the history up to this call holds: the turn it belongs to."""
        return self.offset + sum(1 for m in self.dissected.messages if _prompt_text(m) is not None)


def _prompt_text(message: Message) -> str | None:
    """The text a person typed, if this message is a prompt (not only tool results)."""
    if message.role != "user":
        return None
    texts = [b.text for b in message.blocks if b.type == "text" and b.text]
    return "\n".join(texts) if texts else None


def build_turns(messages: list[Message], linked: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Turns from one message history: a prompt opens a turn; the assistant's texts, thinking
    and tool calls (with their results' previews) until the next prompt are its steps. A tool
    call whose `prompt` started a subagent thread gets `linked_conversation_id` (from `linked`)."""
    turns: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}
    for message in messages:
        prompt = _prompt_text(message)
        if prompt is not None:
            turns.append({"turn_number": len(turns) + 1, "user_prompt": prompt, "steps": []})
            continue
        if not turns:
            continue  # anything before the first prompt (a system message) is not a step
        steps = turns[-1]["steps"]
        for block in message.blocks:
            if block.type == "tool_result":
                target = calls.get(block.tool_id or "")
                if target is not None:
                    target["result_preview"] = _cut(block.text, PREVIEW)
                continue
            if message.role not in ("assistant", "model"):
                continue
            if block.type in ("text", "thinking") and block.text:
                steps.append({"type": block.type, "text": block.text})
            elif block.type == "tool_use":
                step = {"type": "tool_call", "tool_name": block.name, "summary": block.summary}
                if linked and block.prompt and block.prompt.strip() in linked:
                    step["linked_conversation_id"] = linked[block.prompt.strip()]
                steps.append(step)
                if block.tool_id:
                    calls[block.tool_id] = step
    return turns


def thread_key(d: Dissected) -> str | None:
    """What all calls of one conversation share: a hash of its first prompt (None when the
    decoder's requests carry only the new input, or there is no prompt)."""
    if d.decoder not in FULL_HISTORY:
        return None
    for message in d.messages:
        prompt = _prompt_text(message)
        if prompt is not None:
            return hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()[:24]
    return None


def first_prompt(d: Dissected) -> str | None:
    return next((p for m in d.messages if (p := _prompt_text(m)) is not None), None)


def _task_prompts(calls: list[Call]) -> list[str]:
    """The `prompt` inputs of the tool calls in these calls' histories and answers."""
    out: dict[str, None] = {}
    for c in calls:
        for m in [*c.dissected.messages, *([c.dissected.response] if c.dissected.response else [])]:
            for b in m.blocks:
                if b.type == "tool_use" and b.prompt and b.prompt.strip():
                    out[b.prompt.strip()] = None
    return list(out)


def split_threads(calls: list[Call]) -> tuple[list[Call], list[tuple[str, list[Call]]], dict[str, int]]:
    """(main thread, [(kind, thread)], task prompt -> index of the thread it started).

    Threads are runs of calls with the same first prompt, in order of first appearance; calls
    without one stay with the thread before them."""
    groups: dict[str | None, list[Call]] = {}
    current: str | None = None
    for c in calls:
        key = thread_key(c.dissected)
        if key is None:
            key = current
        current = key
        groups.setdefault(key, []).append(c)
    threads = list(groups.values())
    if len(threads) == 1:
        return threads[0], [], {}
    firsts = [first_prompt(t[0].dissected) or "" for t in threads]

    def started(i: int) -> dict[str, int]:
        found: dict[str, int] = {}
        for task in _task_prompts(threads[i]):
            j = next((j for j, text in enumerate(firsts) if j != i and task in text), None)
            if j is not None:
                found[task] = j
        return found

    links = [started(i) for i in range(len(threads))]
    main = max(range(len(threads)), key=lambda i: (len(set(links[i].values())), len(threads[i]), -i))
    linked = set(links[main].values())
    others = [("subagent" if i in linked else "thread", t) for i, t in enumerate(threads) if i != main]
    order = [i for i in range(len(threads)) if i != main]
    return threads[main], others, {task: order.index(j) for task, j in links[main].items()}


class ConversationAssembler:
    def __init__(self, db: peewee.Database, bus: Bus, enabled: Callable[[], bool]) -> None:
        self.db = db
        self.bus = bus
        self.enabled = enabled
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._ordered: list[EndpointRule] = []  # the enabled endpoint rules, in the order they are tried

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.seed_rules()
        if self._state("assembler_version") != ASSEMBLER_VERSION:
            self.reset()
        self._greenlet = gevent.spawn(self._run)
        self._wake.set()  # backfill what arrived while we were not running

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()

    def wake(self) -> None:
        self._wake.set()

    def reset(self) -> None:
        """Forget every conversation and start again from the first transaction."""
        with self.db.atomic():
            Turn.delete().execute()
            Conversation.delete().execute()
            HttpTransaction.update(conversation_id=None).where(HttpTransaction.conversation_id.is_null(False)).execute()
            self._set_state("last_processed_id", "0")
            self._set_state("assembler_version", ASSEMBLER_VERSION)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            gevent.sleep(DEBOUNCE_SECONDS)  # a burst of transactions is one pass
            self._wake.clear()
            try:
                # Fleet mode (docs/fleet.md): one node assembles at a time; the others look again later.
                with try_lock(self.db, CONVERSATIONS) as mine:
                    while mine and self.enabled() and self.run_once() == BATCH:
                        pass
                if not mine:
                    gevent.sleep(2)
                    self._wake.set()
            except Exception:  # keep assembling later transactions; this batch is retried
                log.exception("conversation assembly failed")
                gevent.sleep(5)

    # -- state -------------------------------------------------------------------------------
    def _state(self, key: str) -> str | None:
        row = ConversationProcessingState.get_or_none(ConversationProcessingState.key == key)
        return row.value if row is not None else None

    def _set_state(self, key: str, value: str) -> None:
        ConversationProcessingState.insert(key=key, value=value).on_conflict(
            conflict_target=[ConversationProcessingState.key], update={ConversationProcessingState.value: value}
        ).execute()

    # -- endpoint rules ----------------------------------------------------------------------
    def seed_rules(self) -> None:
        """Built-in rules are re-written at every start (they cannot be edited)."""
        with self.db.atomic():
            xact_lock(self.db, CONVERSATIONS)  # fleet nodes starting together take turns
            EndpointRuleRow.delete().where(EndpointRuleRow.user_defined == False).execute()  # noqa: E712
            for r in BUILTIN_RULES:
                EndpointRuleRow.create(host_pattern=r.host, path_pattern=r.path, method=r.method,
                                       decoder_name=r.decoder, priority=r.priority, enabled=r.enabled,
                                       user_defined=False)
        self._load_rules()

    def _load_rules(self) -> None:
        self._ordered = ordered(
            EndpointRule(host=r.host_pattern, path=r.path_pattern, method=r.method, decoder=r.decoder_name,
                         priority=r.priority, enabled=r.enabled, user_defined=r.user_defined, id=r.id)
            for r in EndpointRuleRow.select().order_by(EndpointRuleRow.id)
        )

    def _rule_for(self, row: Any) -> EndpointRule | None:  # a row, or a head read as a named tuple
        return first_match(self._ordered, row.destination_host.lower(), urlsplit(row.url).path or "/", row.method)

    def _candidate(self, row: Any) -> bool:
        """Worth loading the bodies of: a known LLM endpoint, or a JSON POST that might be one."""
        if row.method in WS_METHODS:
            rule = self._rule_for(row)
            if rule is not None:
                return rule.decoder == "openai-ws"
            hint = getattr(row, "ws_hint", None)
            if hint is None:  # a whole row (rebuild): look at the frame itself
                return WS_MARK.encode() in bytes(getattr(row, "request_body", None) or b"")
            return bool(hint)
        if self._rule_for(row) is not None:
            return True
        return row.method == "POST" and "json" in (row.request_content_type or "").lower()

    def _decoder_for(self, row: HttpTransaction, request_body: str | None) -> str | None:
        rule = self._rule_for(row)
        if rule is not None:
            return rule.decoder
        if row.method in WS_METHODS:
            return "openai-ws"  # a candidate frame: a Responses event, on whatever host
        path = urlsplit(row.url).path or "/"
        learned = auto_rule(row.destination_host.lower(), path, row.method, request_body)
        if learned is None:
            return None
        EndpointRuleRow.insert(host_pattern=learned.host, path_pattern=learned.path, method=learned.method,
                               decoder_name=learned.decoder, priority=learned.priority, enabled=True,
                               user_defined=True).on_conflict_ignore().execute()
        self._load_rules()
        log.info("conversations: %s %s%s looks like a chat API; decoded as %s from now on",
                 learned.method, learned.host, learned.path, learned.decoder)
        return learned.decoder

    # -- assembly ----------------------------------------------------------------------------
    def _dissect(self, row: HttpTransaction) -> Dissected | None:
        request_body = _text(row.request_body)
        decoder = self._decoder_for(row, request_body)
        if decoder is None:
            return None
        return dissect(decoder, row.url, request_body, _text(row.response_body), row.response_content_type)

    def run_once(self) -> int:
        """Assemble the next batch of transactions; returns how many were read."""
        cursor = int(self._state("last_processed_id") or 0)
        # Heads first: most traffic is not LLM calls, and its bodies need not be read at all.
        rows = list(HttpTransaction.select(*_head_columns()).where(HttpTransaction.id > cursor)
                    .order_by(HttpTransaction.id).limit(BATCH).namedtuples())  # no model per head
        touched: dict[str, None] = {}
        recent: dict[tuple[str, str, str | None], tuple[str, dt.datetime]] = {}
        sockets: dict[tuple[str, str, int, str], str] = {}  # WebSocket → conversation of its last call
        for head in rows:
            if not self._candidate(head):
                continue
            row = HttpTransaction.get_by_id(head.id)
            if row.method == "WS_RESP":
                cid = self._ws_answer_conversation(row, sockets)
                if cid is not None:
                    HttpTransaction.update(conversation_id=cid).where(HttpTransaction.id == row.id).execute()
                    touched[cid] = None
                continue
            dissected = self._dissect(row)
            if dissected is not None:
                cid = self._conversation_for(row, dissected, recent)
                HttpTransaction.update(conversation_id=cid).where(HttpTransaction.id == row.id).execute()
                touched[cid] = None
                if row.method == "WS_REQ":
                    sockets[ws_key(row)] = cid
            gevent.sleep(0)  # parsing big bodies: let the proxy's connections run in between
        if rows:
            self._set_state("last_processed_id", str(rows[-1].id))
        for cid in touched:
            self.rebuild(cid)
        return len(rows)

    def _conversation_for(self, row: HttpTransaction, d: Dissected,
                          recent: dict[tuple[str, str, str | None], tuple[str, dt.datetime]]) -> str:
        if d.session_id:
            return d.session_id
        thread = thread_key(d)
        key = (row.container_name, d.provider, thread)
        known = recent.get(key)
        if known is None:
            query = (Conversation.select(Conversation.id, Conversation.ended_at)
                     .where((Conversation.container_name == row.container_name) & (Conversation.provider == d.provider)
                            & Conversation.id.startswith("heuristic_")))
            if thread is not None:
                query = query.where(Conversation.metadata_json.contains(f'"thread": "{thread}"'))
            last = query.order_by(Conversation.ended_at.desc()).first()
            known = (last.id, last.ended_at) if last is not None else None
        cid = known[0] if known is not None and row.timestamp - known[1] <= GAP else f"heuristic_{row.id}"
        recent[key] = (cid, row.timestamp)
        return cid

    def _ws_answer_conversation(self, row: HttpTransaction, sockets: dict[tuple[str, str, int, str], str]) -> str | None:
        """The conversation of the call a final server frame answers: the last call sent on the
        same WebSocket (same client, destination and URL) before it; None for other frames."""
        if ws_response(_text(row.request_body)) is None:
            return None
        known = sockets.get(ws_key(row))
        if known is not None:
            return known
        t = HttpTransaction
        call = (t.select(t.conversation_id)
                .where((t.container_name == row.container_name) & (t.destination_host == row.destination_host)
                       & (t.destination_port == row.destination_port) & (t.url == row.url)
                       & (t.method == "WS_REQ") & (t.id < row.id) & t.conversation_id.is_null(False))
                .order_by(t.id.desc()).first())
        return call.conversation_id if call is not None else None

    def _calls(self, cid: str) -> list[Call]:
        """The conversation's calls in order, WebSocket answers attached to the call they answer."""
        # In the order they were made: with worker processes (docs/workers.md) each writes its
        # own rows, so the ids follow the writes, not the requests.
        rows = (HttpTransaction.select().where(HttpTransaction.conversation_id == cid)
                .order_by(HttpTransaction.timestamp, HttpTransaction.id))
        calls: list[Call] = []
        for row in rows:
            if row.method == "WS_RESP":
                answer = ws_response(_text(row.request_body))
                key = ws_key(row)
                call = next((c for c in reversed(calls) if c.row.method == "WS_REQ" and ws_key(c.row) == key), None)
                if answer is not None and call is not None and call.dissected.response is None:
                    d = call.dissected
                    d.response, d.response_id, d.stop_reason = answer[0], answer[1], answer[2]
                    d.model = d.model or answer[3]
                continue
            if self._candidate(row) and (d := self._dissect(row)) is not None:
                calls.append(Call(row, d))
        return calls

    def rebuild(self, cid: str) -> None:
        calls = self._calls(cid)
        if not calls:
            return
        main, others = calls, []
        links: dict[str, int] = {}
        if not cid.startswith("heuristic_"):  # a heuristic conversation is one thread already
            main, others, links = split_threads(calls)
        counts: dict[str, int] = {}
        child_ids = []
        for kind, _ in others:
            counts[kind] = counts.get(kind, 0) + 1
            child_ids.append(f"{cid}/{kind}_{counts[kind]}")
        linked = {task: child_ids[i] for task, i in links.items()}
        with self.db.atomic():
            old = [c.id for c in Conversation.select(Conversation.id).where(Conversation.parent_conversation_id == cid)]
            if old:
                Turn.delete().where(Turn.conversation_id.in_(old)).execute()
                Conversation.delete().where(Conversation.id.in_(old)).execute()
            turns = self._store(cid, main, None, linked, child_ids)
            for child_id, (kind, thread) in zip(child_ids, others, strict=True):
                self._store(child_id, thread, cid, {}, [], kind)
        self.bus.publish("conversation.updated", {"conversation_id": cid, "turn_count": turns})

    def _store(self, cid: str, calls: list[Call], parent: str | None, linked: dict[str, str],
               children: list[str], kind: str = "main") -> int:
        """Write one conversation (and its turns) from its calls; returns its turn count."""
        # The fullest history (ties: the latest) tells the whole story; its answer ends it.
        best = max(reversed(calls), key=lambda c: len(c.dissected.messages))
        history = list(best.dissected.messages)
        if best.dissected.response is not None:
            history.append(best.dissected.response)
        if any(c.dissected.incremental for c in calls):
            # Each call sent only what was new: the story is all of them, in order.
            history, seen = [], 0
            for c in calls:
                c.offset = seen
                seen = c.prompts
                history.extend(c.dissected.messages)
                if c.dissected.response is not None:
                    history.append(c.dissected.response)
        turns = build_turns(history, linked)
        last = calls[-1]
        for turn in turns:
            mine = [c for c in calls if c.prompts == turn["turn_number"]]
            turn["api_calls_in_turn"] = len(mine)
            turn["request_ids"] = [c.dissected.response_id for c in mine if c.dissected.response_id]
            if mine:
                start, end = mine[0].row, mine[-1].row
                turn["timestamp"], turn["timestamp_end"] = start.timestamp, end.timestamp
                finished = end.timestamp + dt.timedelta(milliseconds=end.duration_ms or 0)
                turn["duration_ms"] = int((finished - start.timestamp).total_seconds() * 1000)
                turn["model"] = mine[-1].dissected.model
        # A call that sends only what is new may leave the instructions to the first one.
        system = "\n\n".join(best.dissected.system or next((c.dissected.system for c in calls
                                                            if c.dissected.system), [])) or None
        incomplete_reason = None
        if last.row.status_code is None or last.row.status_code >= 400:
            incomplete_reason = f"the last API call answered {last.row.status_code or 'nothing'}"
        elif last.dissected.response is None:
            incomplete_reason = "the last answer could not be read"
        metadata: dict[str, Any] = {"api_calls": len(calls), "decoder": best.dissected.decoder,
                                    "thread": thread_key(calls[0].dissected)}
        if parent is not None:
            metadata["thread_kind"] = kind
        if children:
            metadata["linked_subagents"] = children
        with self.db.atomic():
            Conversation.delete().where(Conversation.id == cid).execute()
            Turn.delete().where(Turn.conversation_id == cid).execute()
            Conversation.create(
                parent_conversation_id=parent,
                id=cid, model=last.dissected.model, container_name=calls[0].row.container_name,
                provider=best.dissected.provider,
                client_name=detect_client((c.row.request_headers for c in calls[:5]), best.dissected.client_hint,
                                          [system] if system else [], best.dissected.tools, best.dissected.provider),
                started_at=calls[0].row.timestamp, ended_at=last.row.timestamp, turn_count=len(turns),
                system_prompt=system, system_prompt_summary=_cut(system.strip().splitlines()[0], 100) if system else None,
                first_prompt=_cut(turns[0]["user_prompt"], PROMPT_TITLE) if turns else None,
                last_turn_has_response=last.dissected.response is not None,
                request_ids_json=json.dumps([c.dissected.response_id for c in calls if c.dissected.response_id]),
                metadata_json=json.dumps(metadata),
                incomplete=incomplete_reason is not None, incomplete_reason=incomplete_reason, updated_at=utcnow(),
            )
            for turn in turns:
                Turn.create(
                    conversation_id=cid, turn_number=turn["turn_number"], user_prompt=turn["user_prompt"],
                    steps_json=json.dumps(turn["steps"]), api_calls_in_turn=turn.get("api_calls_in_turn", 0),
                    request_ids_json=json.dumps(turn.get("request_ids", [])), timestamp=turn.get("timestamp"),
                    timestamp_end=turn.get("timestamp_end"), duration_ms=turn.get("duration_ms"),
                    model=turn.get("model"),
                )
        return len(turns)
