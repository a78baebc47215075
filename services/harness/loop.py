"""The turn loop: one inbox message (or operator prompt) → one claude run.

recv (long poll) → wake prompt → ``claude --print --continue …`` → every
stream-json event published on ``hive.agent.<n>.events`` → ack → TurnStats on
``hive.agent.<n>.stats``. A turn whose system prompt differs from the one the
conversation started with (an approved agent.toml ``prompt``) starts a new
conversation instead of ``--continue``. A claude that fails because the
context is too long gets one ``/compact`` and one retry. A claude crash is a
failed turn; the harness goes on with the next message.

What happens to a message whose turn does not finish (cancelled, failed, the
harness stopped, the API unavailable or refusing the credentials) is the
contract in docs/turn-loop.md.

Between turns, notes that grew past ``harness.notes_compact_bytes`` are
compacted by a side claude session (notes.py); the badge says
``compacting`` meanwhile and ``compaction`` records tell how it went. Every
version of the notes is kept (docs/notes.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.context import Context

from hyperhive.common import endpoints as E
from hyperhive.common import retry, rpc, subjects
from hyperhive.common.errors import BadRequest, Forbidden, HiveError, NotFound
from hyperhive.common.redact import mask_data
from hyperhive.common.telemetry import current_traceparent, span, traceparent_context
from hyperhive.common.wire.broker import (
    AckRequest,
    RecvRequest,
    TurnEvent,
    TurnsRequest,
    TurnStats,
)
from hyperhive.common.wire.lifecycle import Heartbeat
from hyperhive.common.wire.states import (
    COMPACTING,
    IDLE,
    LOGIN,
    OFFLINE,
    RETRYING,
    THINKING,
    TurnState,
)
from hyperhive.harness import creds, notes
from hyperhive.harness.claude import AUTH, ClaudeRun, RunResult
from hyperhive.harness.config import HarnessConfig
from hyperhive.harness.hub import Hub
from hyperhive.harness.prompt import Wake, prompt_digest, system_prompt, wake_prompt
from hyperhive.harness.state import HarnessState, check_model
from hyperhive.harness.usage import Usage, UsageMeter

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

API_UNAVAILABLE, LOGIN_NEEDED = "api_unavailable", "login_needed"  # turn outcomes
CREDS_POLL_S = 2.0  # how often a logged-out harness looks for new credentials
MAX_RETRY_AFTER_S = 3600.0  # a longer retry-after is not believed
COMPACT_PROMPT = "/compact"
COMMAND_ECHO_CHARS = 200  # of a command's argument, in its record
# the "new_conversation" record of a turn that does not --continue because the
# system prompt changed (a continued conversation would keep the old one)
PROMPT_CHANGED = "prompt_changed"
NEW_CONVERSATION_PROMPT = "new conversation: the prompt changed"
CANCELLING, NOTHING_TO_CANCEL = "cancelling the running turn", "no turn is running"
ACK_ATTEMPTS = 5
BACKFILL_LIMIT = 1000
HELP = """\
/help              this list
/clear             the next turn starts a fresh claude session (no --continue)
/cancel            end the running turn now (its message is acked and shown to
                   claude again at the top of the next turn)
/compact           compact the conversation now (claude's /compact)
/model <name>      use this model from the next turn on (kept across restarts);
                   /model default goes back to agent.toml's model
anything else      becomes a turn: delivered to claude as a message from the operator"""


@dataclass(frozen=True)
class Compact:
    """An operator ``/compact``: a turn of its own."""


Item = Wake | Compact


class CommandError(ValueError):
    """An operator command that cannot be carried out (the message says why)."""


class Harness:
    """One agent's turn loop and the operator's controls over it."""

    def __init__(self, cfg: HarnessConfig, nc: NATS) -> None:
        self.cfg = cfg
        self.nc = nc
        self.store = HarnessState(cfg.harness_dir, cfg.private_dir)
        self.meter = UsageMeter(lambda: self.store.usage_snapshots, self.store.set_usage_snapshots)
        self.hub = Hub()
        self.started_at = time.time()
        self.state: TurnState = IDLE
        self.state_since = self.started_at
        self.turn = self.store.turn
        self.turn_started: float | None = None
        self.last_turn_ms: float | None = None
        self.last_turn_model = ""
        self.last_outcome = ""
        self._remember_last_turn(self.store.last_turn)
        # the tools claude runs now: tool_use id → name, from a tool_use in the
        # stream until its tool_result (the badge says "running <tool>")
        self._tools: dict[str, str] = {}
        self._ops: collections.deque[Item] = collections.deque()
        self._ops_ready = asyncio.Event()
        self._recv_task: asyncio.Task[Wake | None] | None = None
        self._current: ClaudeRun | None = None
        self._cancel_turn = False
        self._stopping = False
        self._recv_failures = 0
        # whether this turn's prompt carries the note about an earlier unfinished
        # turn: the note is dropped only once this turn has finished (not when
        # the harness stops or dies mid-turn: the resumed turn says it again)
        self._carries_note = False
        self._compacting_notes = False
        # (size, mtime) of notes whose compaction did not replace them: tried
        # again only once the file changes
        self._notes_skip: tuple[int, int] | None = None
        # (size, mtime) of the notes when their version was last kept
        self._notes_kept: tuple[int, int] | None = None
        self._events_subject = subjects.agent(cfg.agent, subjects.AGENT_EVENTS)
        # API faults: the item to run again and the fault; consecutive transient
        # attempts; when the back-off ends; why the credentials were refused
        self._api_fault: tuple[Item, RunResult] | None = None
        self._api_attempts = 0
        self.retry_at: float | None = None
        self.api_error = ""
        self.login_needed = ""
        self._wake_up = asyncio.Event()  # a cancel, or new credentials, ends a wait

    # --- what the page shows ---------------------------------------------------

    @property
    def model(self) -> str:
        """The model of the next turn ("" = the CLI's default)."""
        return self.store.model or self.cfg.default_model

    def status(self) -> dict[str, Any]:
        return {
            "agent": self.cfg.agent,
            "state": self.state,
            "since": self.state_since,
            "turn": self.turn,
            "turn_started": self.turn_started,
            "tools": list(self._tools.values()),
            "last_turn_ms": self.last_turn_ms,
            "last_turn_model": self.last_turn_model,
            "last_outcome": self.last_outcome,
            "model": self.model,
            "model_override": self.store.model,
            "fresh": self.store.fresh,
            "queued": len(self._ops),
            "credentials": creds.kind(self.cfg.creds_dir),
            "retry_at": self.retry_at,
            "api_error": self.api_error,
            "login_needed": bool(self.login_needed),
            "manager": self.cfg.manager,
            "now": time.time(),
        }

    async def publish(self, type: str, event: dict[str, Any], turn: int | None = None) -> None:
        """One record: into the live ring and onto ``hive.agent.<n>.events``.

        claude's own events are masked first (``hyperhive.common.redact``): a
        tool's output may print a config or an environment (``env``, ``cat
        agent.toml``), and the page, HIVE_TURNS and its backfill keep them.
        """
        if type == "claude":
            event = mask_data(event)
        rec = TurnEvent(
            type=type, ts=time.time(), turn=self.turn if turn is None else turn, event=event
        )
        self.hub.add(rec)
        try:
            await rpc.publish(self.nc, self._events_subject, rec)
        except Exception as exc:  # NATS down: the page still has the ring
            log.warning("turn event not published: %s", exc)

    async def _set_state(self, state: TurnState) -> None:
        if state == self.state:
            return
        self.state, self.state_since = state, time.time()
        await self.publish("state", self.status())

    def _remember_last_turn(self, doc: dict[str, Any]) -> bool:
        """Takes the last turn's duration, model and outcome from ``doc`` (the
        kept ``last_turn.json``, or a ``turn_end`` record's fields); False if
        it has no duration."""
        ms = doc.get("duration_ms")
        if not isinstance(ms, int | float) or isinstance(ms, bool):
            return False
        model, outcome = doc.get("model"), doc.get("outcome")
        self.last_turn_ms = float(ms)
        self.last_turn_model = model if isinstance(model, str) else ""
        self.last_outcome = outcome if isinstance(outcome, str) else ""
        return True

    async def _recall_last_turn(self) -> None:
        """Without a kept last turn (a new state dir), the newest ``turn_end``
        of earlier runs in HIVE_TURNS tells the page's "last turn" chip."""
        if self.last_turn_ms is not None:
            return
        try:
            earlier = await self.backfill()
        except Exception:  # the chip stays "–"; the loop goes on
            log.exception("last turn not recalled")
            return
        for ev in reversed(earlier):
            stats = ev.event.get("stats") if ev.type == "turn_end" else None
            if not isinstance(stats, dict):
                continue
            if self.last_turn_ms is None and self._remember_last_turn(
                {**stats, "outcome": ev.event.get("outcome")}
            ):
                await self.publish("state", self.status())
            return

    async def backfill(self) -> list[TurnEvent]:
        """Turn records from before the ring's oldest one (earlier runs), via the broker."""
        boundary = self.hub.oldest_ts or time.time()
        try:
            reply = await rpc.call(
                self.nc,
                E.TURNS,
                TurnsRequest(limit=BACKFILL_LIMIT),
                agent=self.cfg.agent,
                timeout=self.cfg.settings.nats.request_timeout_s,
            )
        except HiveError as exc:
            log.info("no turn backfill: %s", exc)
            return []
        return [e for e in reply.events if e.ts < boundary]

    # --- operator controls -----------------------------------------------------

    def _enqueue(self, item: Item) -> None:
        self._ops.append(item)
        self._ops_ready.set()

    async def operator_prompt(self, text: str) -> None:
        """A prompt typed on the page: becomes a turn of its own (FIFO with /compact)."""
        text = text.strip()
        if not text:
            raise CommandError("empty prompt")
        await self.publish("operator", {"text": text, "queued": len(self._ops)})
        self._enqueue(Wake(body=text, sender=subjects.OPERATOR, source="operator", ts=time.time()))

    async def command(self, line: str) -> str:
        """Runs a slash command; returns the text to show.

        The command and its reply (or why it was refused) are an ``operator``
        record, so the tail, and a reload's backfill, keep them.

        Raises:
            CommandError: unknown command or bad argument.
        """
        parts = line.strip().split(None, 1)
        name = parts[0].lower() if parts else ""
        arg = parts[1].strip() if len(parts) > 1 else ""
        if name == "/cancel":  # cancel() records it, before the turn's end
            return CANCELLING if await self.cancel() else NOTHING_TO_CANCEL
        said: dict[str, Any] = {"command": name or line.strip()[:COMMAND_ECHO_CHARS]}
        if arg:
            said["arg"] = arg[:COMMAND_ECHO_CHARS]
        try:
            reply = await self._command(name, arg)
        except CommandError as exc:
            await self.publish("operator", {**said, "reply": str(exc), "error": True})
            raise
        if name == "/model" and arg:
            said["model"] = self.model
        await self.publish("operator", {**said, "reply": reply})
        if name == "/model" and arg:
            await self.publish("state", self.status())
        return reply

    async def _command(self, name: str, arg: str) -> str:
        match name:
            case "/help":
                return HELP
            case "/clear":
                self.store.set_fresh(True)
                return "the next turn starts a fresh session"
            case "/compact":
                reply = "compaction queued" if self.state != IDLE else "compacting"
                self._enqueue(Compact())
                return reply
            case "/model":
                if not arg:
                    return f"model: {self.model or '(claude default)'}"
                if arg.lower() in ("default", "reset"):
                    self.store.reset_model()
                else:
                    try:
                        self.store.set_model(check_model(arg))
                    except ValueError as exc:
                        raise CommandError(str(exc)) from None
                return f"model: {self.model or '(claude default)'} from the next turn on"
        raise CommandError(f"unknown command {name!r}; /help lists them")

    async def cancel(self) -> bool:
        """Ends the running turn's (or notes compaction's) claude process (within
        2 s), or gives up the message an API fault keeps waiting. False if none.

        The request and its reply are an ``operator`` record, published before
        the process is ended, so the tail has them before the turn's end.
        """
        running = (
            self.state in (RETRYING, LOGIN)
            or self.turn_started is not None
            or self._compacting_notes
        )
        if running:
            self._cancel_turn = True
        reply = CANCELLING if running else NOTHING_TO_CANCEL
        await self.publish("operator", {"command": "/cancel", "reply": reply})
        if not running:
            return False
        if self.state in (RETRYING, LOGIN):
            self._wake_up.set()
        elif self._current is not None:
            await self._current.cancel()
        return True

    # --- the loop --------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Takes items one at a time until ``stop`` is set.

        On stop, a running claude is ended and its message kept (not acked) in
        private (see state.py), as is a message the last long poll brought: the next
        harness run takes them first (the broker would hand them out again
        only after its visibility timeout).
        """
        for doc in self.store.pending:
            wake = Wake.from_doc(doc)
            if wake is not None:
                self._ops.append(dataclasses.replace(wake, resumed=True))
        self.store.set_pending([])
        await self.publish("state", self.status())
        watcher = asyncio.create_task(self._watch_stop(stop))
        recall = asyncio.create_task(self._recall_last_turn())
        try:
            while not stop.is_set():
                self.keep_notes()
                await self.compact_notes()
                if stop.is_set():
                    break
                item = await self._next(stop)
                if item is None:
                    continue
                if stop.is_set():
                    self._keep_pending(item)
                    break
                try:
                    await self._run_item(item)
                    if self._api_fault is not None:
                        await self._after_api_fault(stop)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("turn %s failed in the harness", self.turn)
                    self.turn_started = None
                    await self._set_state(IDLE)
        finally:
            watcher.cancel()
            recall.cancel()
            if self._current is not None:
                await self._current.cancel()
            await self._drain_recv()

    def keep_notes(self, turn: int | None = None) -> None:
        """Keeps the notes as a new version in their history if they changed."""
        try:
            st = self.cfg.notes_path.stat()
        except OSError:
            return
        key = (st.st_size, st.st_mtime_ns)
        if key == self._notes_kept:
            return
        if notes.record_change(self.cfg, turn):
            self._notes_kept = key

    async def compact_notes(self) -> notes.Outcome | None:
        """Compacts the notes when they grew past the limit; None when not needed.

        Runs between turns only. A compaction that does not replace the file
        (failed, empty, refused) is not tried again until the file changes.
        """
        key = notes.over_limit(self.cfg)
        if key is None or key == self._notes_skip or self._stopping:
            return None
        try:
            original = self.cfg.notes_path.read_bytes()
        except OSError:
            return None
        limit = self.cfg.settings.harness.notes_compact_bytes
        await self.publish("compaction", {"phase": "start", "bytes": len(original), "limit": limit})
        self._compacting_notes = True
        await self._set_state(COMPACTING)
        t0 = time.monotonic()
        try:
            session = notes.SessionLog()
            res, why = await self._compaction_session(original, session)
            outcome = notes.apply(self.cfg, original, res, session)
            if why and not outcome.replaced:
                outcome = dataclasses.replace(outcome, error=why)
        finally:
            self._compacting_notes = False
        self._notes_skip = None if outcome.replaced else key
        log.info(
            "notes compaction %s: %d → %s bytes %s",
            outcome.outcome,
            outcome.before,
            outcome.after,
            outcome.error,
        )
        await self.publish(
            "compaction",
            {
                "phase": "end",
                **dataclasses.asdict(outcome),
                "replaced": outcome.replaced,
                "notes_bytes": _size(self.cfg.notes_path),
                "history": f"hive notes {self.cfg.agent} --history",
                "duration_ms": round((time.monotonic() - t0) * 1000, 1),
            },
        )
        # what the side session cost counts, though it is not a turn
        await self._publish_stats(
            TurnStats(
                kind="compaction",
                ts=time.time(),
                duration_ms=round(res.duration_ms, 1),
                exit_code=res.exit_code,
                messages_received=0,
                **self._usage([res]),
                model=res.model or self.model,
                notes_bytes=_size(self.cfg.notes_path),
            )
        )
        await self._set_state(IDLE)
        return outcome

    def _usage(self, runs: list[RunResult]) -> dict[str, Any]:
        """The :class:`TurnStats` usage fields of some runs (once per run: see usage.py)."""
        return sum((self.meter.of(r.result) for r in runs), Usage()).fields()

    async def _publish_stats(self, stats: TurnStats) -> None:
        try:
            await rpc.publish(self.nc, subjects.agent(self.cfg.agent, subjects.AGENT_STATS), stats)
        except Exception as exc:
            log.warning("turn stats not published: %s", exc)

    async def _compaction_session(
        self, original: bytes, session: notes.SessionLog
    ) -> tuple[RunResult, str]:
        """Runs the side session (bounded by ``notes_compact_timeout_s``).

        Returns its result and, when it was ended early, why.
        """
        run = notes.compaction_run(self.cfg, original.decode(errors="replace"), self.model)
        self._current = run
        task = asyncio.ensure_future(run.run(session.on_event))
        timeout = self.cfg.settings.harness.notes_compact_timeout_s
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            why = ""
            if not done:
                why = f"the compaction took longer than {timeout:g} s"
                await run.cancel()
            res = await task
        except asyncio.CancelledError:
            await run.cancel()
            raise
        finally:
            self._current = None
        if res.cancelled and not why:
            why = "the harness stopped" if self._stopping else "cancelled by the operator"
        return res, why

    # --- API faults (docs/turn-loop.md) ------------------------------------------

    def credentials_changed(self) -> None:
        """The operator stored new credentials: a logged-out loop tries again now."""
        if self.state == LOGIN:
            self._wake_up.set()

    async def _after_api_fault(self, stop: asyncio.Event) -> None:
        """Waits as the fault says, then puts the same item first in line again.

        Transient: a bounded, jittered exponential back-off (at least the delay
        claude's own retries chose, which honours ``retry-after``). Credentials
        refused: until they change. A stop keeps the message for the next
        harness run; a ``/cancel`` gives it up like a cancelled turn.
        """
        assert self._api_fault is not None
        item, res = self._api_fault
        self._api_fault = None
        self._wake_up.clear()
        self._cancel_turn = False
        if res.api_fault == AUTH:
            self.login_needed = res.error or "the API refused the credentials"
            await self.publish(LOGIN_NEEDED, {"error": self.login_needed})
            await self._set_state(LOGIN)
            fingerprint = creds.fingerprint(self.cfg.creds_dir)
            while not (stop.is_set() or self._wake_up.is_set()):
                await _wait_any(stop, self._wake_up, CREDS_POLL_S)
                if creds.fingerprint(self.cfg.creds_dir) != fingerprint:
                    break
            self.login_needed = ""
        else:
            self._api_attempts += 1
            delay = self._backoff_s(res.retry_delay_s)
            self.retry_at, self.api_error = time.time() + delay, res.error
            await self.publish(
                "api_retry",
                {"attempt": self._api_attempts, "delay_s": round(delay, 1), "error": res.error},
            )
            await self._set_state(RETRYING)
            await _wait_any(stop, self._wake_up, delay)
            self.retry_at, self.api_error = None, ""
        if stop.is_set():
            self._keep_pending(item)
        elif self._cancel_turn:
            self._cancel_turn = False
            self._api_attempts = 0
            await self._give_up(item, "cancelled by the operator")
        else:
            self._ops.appendleft(item)  # before anything queued meanwhile
        await self._set_state(IDLE)

    def _backoff_s(self, hint_s: float) -> float:
        h = self.cfg.settings.harness
        return backoff_s(self._api_attempts, h.api_backoff_s, h.api_backoff_max_s, hint_s)

    async def _give_up(self, item: Item, reason: str) -> None:
        """Acks a message whose turn will not run, keeping it for the next prompt."""
        if isinstance(item, Wake):
            self.store.set_interrupted(
                {
                    "reason": reason,
                    "sender": item.sender,
                    "id": item.id,
                    "body": item.body,
                    "turn": self.turn,
                }
            )
            if item.id is not None:
                await self._ack(item.id)

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping = True
        if self._current is not None:
            await self._current.cancel()

    def _keep_pending(self, item: Item) -> None:
        """Keeps a taken, unfinished broker message for the next harness run."""
        if isinstance(item, Wake) and item.id is not None:
            docs = self.store.pending
            if all(d.get("id") != item.id for d in docs):
                self.store.set_pending([*docs, item.to_doc()])

    async def _drain_recv(self) -> None:
        """Lets an in-flight long poll finish, so no message goes to a dead inbox."""
        task, self._recv_task = self._recv_task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self.cfg.settings.harness.recv_wait_s + 2)
        if not done:
            task.cancel()
            return
        with contextlib.suppress(Exception):
            wake = task.result()
            if wake is not None:
                self._keep_pending(wake)

    async def _next(self, stop: asyncio.Event) -> Item | None:
        """The next operator item, else the next inbox message (long poll)."""
        self._ops_ready.clear()
        if self._ops:
            return self._ops.popleft()
        if self._recv_task is None:
            self._recv_task = asyncio.create_task(self._recv())
        waiters = {
            asyncio.create_task(self._ops_ready.wait()),
            asyncio.create_task(stop.wait()),
        }
        try:
            await asyncio.wait({self._recv_task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self._ops:  # the operator first; a message the recv got waits its turn
            return self._ops.popleft()
        if self._recv_task.done():
            task, self._recv_task = self._recv_task, None
            return task.result()
        return None

    async def _recv(self) -> Wake | None:
        wait_s = self.cfg.settings.harness.recv_wait_s
        try:
            reply = await rpc.call(
                self.nc,
                E.RECV,
                RecvRequest(wait_ms=int(wait_s * 1000)),
                agent=self.cfg.agent,
                timeout=wait_s + self.cfg.settings.nats.request_timeout_s,
            )
        except HiveError as exc:
            self._recv_failures += 1
            log.warning("recv failed (%d): %s", self._recv_failures, exc)
            if self._recv_failures >= 3 and self.turn_started is None:
                await self._set_state(OFFLINE)
            await asyncio.sleep(retry.RECV.delay(self._recv_failures))
            return None
        self._recv_failures = 0
        if self.state == OFFLINE:
            await self._set_state(IDLE)
        m = reply.message
        if m is None:
            return None
        return Wake(
            body=m.body,
            sender=m.sender,
            source="broker",
            id=m.id,
            ts=m.ts,
            redelivered=m.redelivered,
            deliveries=m.deliveries,
            event_type=type(m.event).__name__ if m.event is not None else "",
            traceparent=m.traceparent or "",
        )

    async def _run_item(self, item: Item) -> None:
        self.turn += 1
        self.store.set_turn(self.turn)
        self._cancel_turn = False
        self.turn_started = time.time()
        t0 = time.monotonic()
        # the turn continues the trace of the message's send (DESIGN §8); its
        # records, stats, acks and the MCP server's requests are its children
        with span(
            tracer,
            f"turn {self.cfg.agent}",
            parent=_parent_context(item),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "hive.agent": self.cfg.agent,
                "hive.turn": self.turn,
                "hive.message_id": item.id if isinstance(item, Wake) and item.id else 0,
            },
        ) as turn_span:
            if isinstance(item, Compact):
                await self.publish(
                    "turn_start",
                    {"source": "operator", "command": COMPACT_PROMPT, "trace_id": _trace_id()},
                )
                await self._set_state(COMPACTING)
                runs, compact_retry = [await self._claude(COMPACT_PROMPT, resume=True)], False
            else:
                runs, compact_retry = await self._wake_turn(item)
            await self._finish(item, runs, compact_retry, (time.monotonic() - t0) * 1000)
            turn_span.set_attribute("hive.outcome", self.last_outcome)

    async def _wake_turn(self, wake: Wake) -> tuple[list[RunResult], bool]:
        interrupted = self.store.interrupted
        digest = prompt_digest(system_prompt(self.cfg))
        kept = self.store.conversation_prompt
        # a continued conversation keeps the system prompt it started with (the
        # CLI ignores a new --append-system-prompt): a changed prompt, e.g. an
        # approved agent.toml `prompt`, takes effect only in a new conversation
        prompt_changed = bool(kept) and kept != digest
        fresh = self.store.fresh or prompt_changed
        await self.publish(
            "turn_start",
            {**wake.record(), "model": self.model, "fresh": fresh, "trace_id": _trace_id()},
        )
        if prompt_changed:
            log.info("%s turn %d: %s", self.cfg.agent, self.turn, NEW_CONVERSATION_PROMPT)
            await self.publish(
                "new_conversation",
                {
                    "reason": PROMPT_CHANGED,
                    "text": NEW_CONVERSATION_PROMPT,
                    "prompt_digest": digest,
                    "previous_digest": kept,
                },
            )
        await self._set_state(THINKING)
        prompt = wake_prompt(self.cfg, wake, interrupted)
        self.store.set_fresh(False)
        self._carries_note = interrupted is not None
        first = await self._claude(prompt, resume=not fresh)
        if first.init is not None and (fresh or not kept):
            # claude started a conversation with this prompt (a fresh one, or
            # the first one this state dir knows of: it is taken as it is); a
            # run that never started leaves the digest, so the next turn tries again
            self.store.set_conversation_prompt(digest)
        runs = [first]
        if first.prompt_too_long and not self._cancel_turn:
            # the conversation outgrew the context: compact, then try once more
            await self.publish("compact_retry", {"reason": first.error})
            await self._set_state(COMPACTING)
            runs.append(await self._claude(COMPACT_PROMPT, resume=True))
            if not self._cancel_turn:
                await self._set_state(THINKING)
                runs.append(await self._claude(prompt, resume=True))
            return runs, True
        return runs, False

    async def _claude(self, prompt: str, *, resume: bool) -> RunResult:
        run = ClaudeRun(
            self.cfg,
            prompt,
            resume=resume,
            model=self.model,
            system_prompt=system_prompt(self.cfg),
            traceparent=current_traceparent() or "",
        )
        self._current = run
        if self._cancel_turn or self._stopping:
            await run.cancel()
        turn = self.turn

        async def on_event(event: dict[str, Any]) -> None:
            await self.publish("claude", event, turn)
            if _track_tools(self._tools, event):
                await self.publish("state", self.status())

        try:
            return await run.run(on_event)
        finally:
            self._current = None
            if self._tools:  # a tool claude did not see finish (cancelled, crashed)
                self._tools.clear()
                await self.publish("state", self.status())

    async def _finish(
        self, item: Item, runs: list[RunResult], compact_retry: bool, duration_ms: float
    ) -> None:
        last = runs[-1]
        carries_note, self._carries_note = self._carries_note, False
        cancelled = self._cancel_turn or any(r.cancelled for r in runs)
        if cancelled and self._stopping and not self._cancel_turn:
            # the harness is stopping, not the operator cancelling: the message
            # is not acked and the next harness run takes it again
            outcome, error = "interrupted", "the harness stopped"
            self._keep_pending(item)
        elif not cancelled and last.api_fault:
            # nothing ran: the same message runs again once the API answers
            # (the note of an earlier unfinished turn stays for that run)
            outcome = LOGIN_NEEDED if last.api_fault == AUTH else API_UNAVAILABLE
            error = last.error
            self._api_fault = (item, last)
        else:
            self._api_attempts = 0
            outcome = "cancelled" if cancelled else ("ok" if last.ok else "failed")
            error = "cancelled by the operator" if cancelled else last.error
            if carries_note:
                self.store.set_interrupted(None)  # claude saw it in this turn's prompt
            if isinstance(item, Wake) and outcome != "ok":
                self.store.set_interrupted(
                    {
                        "reason": error[:300] or outcome,
                        "sender": item.sender,
                        "id": item.id,
                        "body": item.body,
                        "turn": self.turn,
                    }
                )
            if isinstance(item, Wake) and item.id is not None:
                await self._ack(item.id)
        self.keep_notes(self.turn)
        tool_calls: Counter[str] = Counter()
        sent_to: Counter[str] = Counter()
        for r in runs:
            tool_calls.update(r.tool_calls)
            sent_to.update(r.sent_to)
        stats = TurnStats(
            ts=time.time(),
            duration_ms=round(duration_ms, 1),
            exit_code=last.exit_code,
            tool_calls=dict(tool_calls),
            messages_sent=sum(sent_to.values()),
            messages_sent_to=dict(sent_to),
            messages_received=(1 if isinstance(item, Wake) else 0)
            + sum(r.recv_calls for r in runs),
            compact_retry=compact_retry,
            **self._usage(runs),
            model=last.model or self.model,
            notes_bytes=_size(self.cfg.notes_path),
        )
        self.last_turn_ms = stats.duration_ms
        self.last_turn_model = stats.model
        self.last_outcome = outcome
        self.store.set_last_turn(
            {"duration_ms": stats.duration_ms, "model": stats.model, "outcome": outcome}
        )
        self.turn_started = None
        await self.publish(
            "turn_end",
            {
                "outcome": outcome,
                "error": error if outcome != "ok" else "",
                "message_id": item.id if isinstance(item, Wake) else None,
                "acked": outcome not in ("interrupted", API_UNAVAILABLE, LOGIN_NEEDED)
                and isinstance(item, Wake)
                and item.id is not None,
                "stats": msgspec.to_builtins(stats),
            },
        )
        if self._api_fault is None:  # a turn the API did not answer made no stats
            await self._publish_stats(stats)
        await self._set_state(IDLE)

    async def _ack(self, message_id: int) -> None:
        """Acks with retries; if the broker stays away it redelivers later (at least once)."""
        try:
            await retry.retry(
                lambda: rpc.call(
                    self.nc,
                    E.ACK,
                    AckRequest(id=message_id),
                    agent=self.cfg.agent,
                    timeout=self.cfg.settings.nats.request_timeout_s,
                ),
                retry.ACK,
                on=(HiveError,),
                give_up=lambda exc: isinstance(exc, BadRequest | NotFound | Forbidden),
                tries=ACK_ATTEMPTS,
                what=f"ack of {message_id}",
            )
        except HiveError as exc:
            log.warning("ack of %d not done: %s", message_id, exc)

    # --- heartbeat -------------------------------------------------------------

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Core-publishes a :class:`Heartbeat` to the KV key every interval."""
        subject = subjects.kv_subject(subjects.heartbeat_key(self.cfg.agent))
        interval = max(0.2, self.cfg.settings.harness.heartbeat_interval_s)
        while not stop.is_set():
            beat = Heartbeat(
                ts=time.time(), turn_started=self.turn_started, login_needed=self.login_needed
            )
            try:
                await self.nc.publish(subject, msgspec.json.encode(beat))
            except Exception as exc:
                log.warning("heartbeat not published: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def backoff_s(attempt: int, base_s: float, max_s: float, hint_s: float = 0.0) -> float:
    """The wait before attempt ``attempt + 1`` after ``attempt`` transient faults in
    a row: ``base_s`` doubled per attempt up to ``max_s``, jittered down to half
    of that, and never shorter than ``hint_s`` (the API's ``retry-after`` as
    claude saw it, believed up to an hour)."""
    return retry.Backoff(base_s, max_s).delay(attempt, hint_s=min(hint_s, MAX_RETRY_AFTER_S))


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Returns when either event is set or after ``timeout`` seconds."""
    waiters = {asyncio.create_task(a.wait()), asyncio.create_task(b.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _track_tools(running: dict[str, str], event: dict[str, Any]) -> bool:
    """Follows the tools a stream-json ``event`` starts (``tool_use`` blocks of an
    assistant message) and ends (``tool_result`` blocks of a user message) in
    ``running``; True if that changed."""
    kind = event.get("type")
    if kind not in ("assistant", "user"):
        return False
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return False
    changed = False
    for block in content:
        if not isinstance(block, dict):
            continue
        ident = block.get("id") if kind == "assistant" else block.get("tool_use_id")
        if not isinstance(ident, str):
            continue
        if kind == "assistant" and block.get("type") == "tool_use":
            running[ident] = str(block.get("name") or "?")
            changed = True
        elif kind == "user" and block.get("type") == "tool_result" and ident in running:
            del running[ident]
            changed = True
    return changed


def _parent_context(item: Item) -> Context:
    """The trace context the message's send carried; a fresh trace for the rest."""
    return traceparent_context(item.traceparent if isinstance(item, Wake) else None)


def _trace_id() -> str:
    """The current trace's id (32 hex digits), "" outside one."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""


def _size(path: Any) -> int | None:
    try:
        return int(path.stat().st_size)
    except OSError:
        return None
