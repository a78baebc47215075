"""``hive approvals``, ``hive diff``, ``hive approve``, ``hive deny``,
``hive questions``, ``hive answer``: the operator's side of the approval queue."""

from __future__ import annotations

import argparse
import sys

from hyperhive.cli.client import call, decided_by, fmt_ts, print_json, print_table, run_command
from hyperhive.common import endpoints as E
from hyperhive.common.config import Settings
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalsRequest,
    ApproveRequest,
    DenyRequest,
    QuestionInfo,
    QuestionsRequest,
)

# an approve waits for the build; leave the service's own limit room to answer
BUILD_MARGIN_S = 30.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this module's verbs."""
    p = sub.add_parser("approvals", help="list approvals (pending ones unless --all)")
    p.add_argument("--all", action="store_true", help="every approval, resolved ones too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_approvals)

    p = sub.add_parser("diff", help="show what an approval would change (git diff)")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_diff)

    p = sub.add_parser("approve", help="approve and deploy; waits for the build")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_approve)

    p = sub.add_parser("deny", help="deny an approval; the note goes into its git tag")
    p.add_argument("id", type=int)
    p.add_argument(
        "--note",
        required=True,
        help="why (required: the manager reads it; it is the message of tag denied/<id>)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_deny)

    p = sub.add_parser("questions", help="the manager's questions (open ones unless --all)")
    p.add_argument("--all", action="store_true", help="answered questions too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_questions)

    p = sub.add_parser(
        "answer", help="answer a question: TEXT, --choice for options, --none for no checkbox"
    )
    p.add_argument("id", type=int)
    p.add_argument("text", nargs="?", help="free-text answer")
    p.add_argument("--choice", action="append", help="an option to choose (repeat for several)")
    p.add_argument(
        "--none", action="store_true", help="tick no checkbox (a checkbox question only)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_answer)


def _approvals(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        req = ApprovalsRequest(state=None if args.all else "pending")
        reply = await call(settings, E.APPROVALS_LIST, req)
        if args.json:
            print_json(reply.approvals)
            return 0
        if not reply.approvals:
            print("no approvals" if args.all else "no pending approvals")
            return 0
        headers = ["id", "kind", "agent", "state", "sha", "created", "detail"]
        rows = [
            [a.id, a.kind, a.agent, a.state, a.fetched_sha[:12], fmt_ts(a.created_at), _detail(a)]
            for a in reply.approvals
        ]
        if args.all:  # who decided each resolved one, and when
            headers[-1:-1] = ["decided by", "decided at"]
            for row, a in zip(rows, reply.approvals, strict=True):
                row[-1:-1] = [a.decided_by, fmt_ts(a.decided_at)]
        print_table(headers, rows)
        return 0

    return run_command(body)


def _detail(a: ApprovalInfo) -> str:
    text = a.error or a.note or a.commit_ref
    first = text.splitlines()[0] if text else ""
    return first[:60]


def _diff(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        reply = await call(settings, E.DIFF, ApprovalIdRequest(id=args.id))
        if args.json:
            print_json(reply)
        else:
            if reply.sha:
                print(f"approval {reply.id}  sha {reply.sha}  files: {len(reply.files)}")
            sys.stdout.write(reply.diff if reply.diff.endswith("\n") else reply.diff + "\n")
        return 0

    return run_command(body)


def _print_approval(a: ApprovalInfo) -> None:
    print(f"approval {a.id} ({a.kind} {a.agent}): {a.state}" + (f"  tag {a.tag}" if a.tag else ""))
    if a.error:
        print(a.error)


def _approve(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        reply = await call(
            settings,
            E.APPROVE,
            ApproveRequest(id=args.id, decided_by=decided_by()),
            timeout=settings.approvals.build_timeout_s + BUILD_MARGIN_S,
        )
        if args.json:
            print_json(reply)
        else:
            _print_approval(reply)
        return 0 if reply.state == "deployed" else 1

    return run_command(body)


def _deny(args: argparse.Namespace) -> int:
    if not args.note.strip():
        print("hive deny: --note must say why (the manager reads it)", file=sys.stderr)
        return 2

    async def body(settings: Settings) -> int:
        req = DenyRequest(id=args.id, note=args.note, decided_by=decided_by())
        reply = await call(settings, E.DENY, req)
        if args.json:
            print_json(reply)
        else:
            _print_approval(reply)
        return 0

    return run_command(body)


def _form(q: QuestionInfo) -> str:
    if q.options is None:
        return "text"
    return ("checkboxes: " if q.multi else "one of: ") + " | ".join(q.options)


def _questions(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        req = QuestionsRequest(answered=None if args.all else False)
        reply = await call(settings, E.QUESTIONS, req)
        if args.json:
            print_json(reply.questions)
            return 0
        if not reply.questions:
            print("no questions" if args.all else "no open questions")
            return 0
        headers = ["id", "asked", "question", "form", "answer"]
        rows = [
            [
                q.id,
                fmt_ts(q.asked_at),
                q.question.splitlines()[0][:60],
                _form(q)[:60],
                ", ".join(q.answer) if q.answer is not None else "",
            ]
            for q in reply.questions
        ]
        if args.all:  # who answered, and when
            headers += ["answered by", "answered at"]
            for row, q in zip(rows, reply.questions, strict=True):
                row += [q.answered_by, fmt_ts(q.answered_at)]
        print_table(headers, rows)
        return 0

    return run_command(body)


def _answer(args: argparse.Namespace) -> int:
    choices = args.choice or []
    given = (args.text is not None) + bool(choices) + args.none
    if given != 1:
        print("hive answer: give one of TEXT, --choice (repeatable) or --none", file=sys.stderr)
        return 2

    async def body(settings: Settings) -> int:
        answer = [args.text] if args.text is not None else choices  # --none: []
        req = AnswerRequest(id=args.id, answer=answer, decided_by=decided_by())
        reply = await call(settings, E.ANSWER, req)
        if args.json:
            print_json(reply)
        else:
            print(f"question {reply.id} answered: {', '.join(reply.answer or []) or '(none)'}")
        return 0

    return run_command(body)
