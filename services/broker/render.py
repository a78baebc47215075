"""One readable line per system event: the body of a ``system`` message."""

from __future__ import annotations

from hyperhive.common.wire.events import (
    AgentStuck,
    ApprovalResolved,
    ContainerCrash,
    NodeBack,
    NodeLost,
    OperatorAnswered,
    SpawnResolved,
    SystemEvent,
)
from hyperhive.common.wire.states import STUCK_WHY


def render_event(event: SystemEvent) -> str:
    """What the manager reads in its inbox for ``event`` (one line)."""
    match event:
        case ContainerCrash(agent=agent, detail=detail, exit_code=code):
            text = f"container of {agent} crashed"
            if code is not None:
                text += f" (exit code {code})"
            return _with(text, detail)
        case AgentStuck(agent=agent, reason=reason, detail=detail):
            why = STUCK_WHY.get(reason, reason)
            return _with(f"agent {agent} looks stuck: {why}", detail)
        case ApprovalResolved(
            approval_id=aid, agent=agent, state=state, tag=tag, note=note, sha=sha
        ):
            text = f"approval #{aid} for {agent}: {state}"
            if sha:
                text += f" (commit {sha[:12]})"
            if tag:
                text += f", tag {tag}"
            return _with(text, note)
        case SpawnResolved(approval_id=aid, agent=agent, state=state, note=note):
            return _with(f"spawn approval #{aid} for {agent}: {state}", note)
        case OperatorAnswered(question_id=qid, question=question, answer=answer):
            answered = ", ".join(answer) if answer else "(no answer)"
            return _one_line(f"operator answered question #{qid} ({question}): {answered}", 2000)
        case NodeLost(node=node, agents=agents, silent_s=silent):
            on = ", ".join(agents) if agents else "no agents"
            return _one_line(
                f"node {node} is lost (no heartbeat for {silent:.0f}s); its agents: {on}; "
                "messages to them wait until it is back",
                2000,
            )
        case NodeBack(node=node, agents=agents, restarted=restarted):
            text = f"node {node} is back; its agents: {', '.join(agents) or 'none'}"
            if restarted:
                text += f" (started again: {', '.join(restarted)})"
            return _one_line(text, 2000)
    return f"system event {type(event).__name__}"  # pragma: no cover - union is exhaustive


def _with(text: str, detail: str) -> str:
    detail = _one_line(detail)
    return f"{text}: {detail}" if detail else text


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
