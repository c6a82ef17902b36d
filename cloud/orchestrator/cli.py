"""``tandem hub proposals ...``, ``tandem hub intents ...`` and ``tandem hub orchestrator ...``, through the hub's
HTTP API ($TANDEM_HUB_URL, $TANDEM_HUB_TOKEN).

    tandem hub proposals list [--state PROPOSED]
    tandem hub proposals propose '{"tool": "set_replicas", "min_replicas": 1, "max_replicas": 3}' [--reason WHY]
    tandem hub proposals approve|reject|revert ID
    tandem hub intents "keep cloud cost under 5 per hour"
    tandem hub orchestrator status|snapshot
    tandem hub orchestrator audit [--after N] [--verify]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from cloud.client import HubHttpError, default_url, request
from cloud.orchestrator.store import ProposalState


def _line(row: dict[str, Any]) -> str:
    action = dict(row["action"])
    tool = action.pop("tool", "malformed")
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in action.items())
    when = time.strftime("%H:%M:%S", time.localtime(row["created_at"]))
    why = row["detail"] or row["reason"]
    return f"{row['proposal_id']}  {when}  {row['state']:<9} {row['source']:<14} {tool}({args})  {why}"


def _proposals(base: str, args: argparse.Namespace) -> int:
    if args.proposals_command == "list":
        query = urllib.parse.urlencode({"state": args.state} if args.state else {})
        rows = request(f"{base}/v1/admin/proposals?{query}", "GET")
        for row in rows:
            print(_line(row))
        print(f"{len(rows)} proposals")
        return 0
    if args.proposals_command == "propose":
        try:
            action = json.loads(args.action)
        except ValueError as exc:
            raise HubHttpError(f"the action is not JSON: {exc}") from exc
        row = request(
            f"{base}/v1/admin/proposals", "POST", json.dumps({"action": action, "reason": args.reason}).encode()
        )
        print(_line(row))
        return 0 if row["state"] == "PROPOSED" else 1
    row = request(f"{base}/v1/admin/proposals/{args.proposal_id}/{args.proposals_command}", "POST", b"")
    print(_line(row))
    return 0 if row["state"] in ("APPLIED", "REJECTED", "REVERTED") else 1


def _intents(base: str, args: argparse.Namespace) -> int:
    rows = request(f"{base}/v1/admin/intents", "POST", json.dumps({"text": args.text}).encode())
    for row in rows:
        print(_line(row))
    waiting = sum(1 for r in rows if r["state"] == "PROPOSED")
    print(f"{waiting} proposals wait for approval (tandem hub proposals approve ID); {len(rows) - waiting} blocked")
    return 0


def _orchestrator(base: str, args: argparse.Namespace) -> int:
    if args.orchestrator_command in ("status", "snapshot"):
        path = "" if args.orchestrator_command == "status" else "/snapshot"
        print(json.dumps(request(f"{base}/v1/admin/orchestrator{path}", "GET"), indent=2))
        return 0
    query = urllib.parse.urlencode({"after": args.after, "verify": "true" if args.verify else "false"})
    found = request(f"{base}/v1/admin/orchestrator/audit?{query}", "GET")
    for entry in found["entries"]:
        when = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
        body = {k: v for k, v in entry["entry"].items() if k != "snapshot"}
        print(f"{entry['seq']:>6} {when} {entry['kind']:<9} {json.dumps(body)[:200]}")
    if args.verify:
        print(f"chain: {found['chain']}")
        return 0 if found["chain"] == "intact" else 1
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {"proposals": _proposals, "intents": _intents, "orchestrator": _orchestrator}
    try:
        return handlers[args.hub_command](args.url.rstrip("/"), args)
    except HubHttpError as exc:
        print(f"tandem hub {args.hub_command}: {exc}", file=sys.stderr)
        return 1


def add_parsers(hub: Any) -> None:
    proposals = hub.add_parser("proposals", help="the orchestrator's proposals: list, approve, reject, revert")
    proposals.set_defaults(handler=run)
    proposals.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    sub = proposals.add_subparsers(dest="proposals_command", required=True)
    listing = sub.add_parser("list", help="newest first")
    listing.add_argument("--state", choices=[s.value for s in ProposalState])
    own = sub.add_parser("propose", help="an action of your own, as JSON: checked by the guardrails, then it waits")
    own.add_argument(
        "action", help='e.g. {"tool": "set_judge_threshold", "group": "lobby", "confidence_threshold": 0.8}'
    )
    own.add_argument("--reason", default="")
    for step, help_text in (
        ("approve", "apply a waiting proposal (its bounds are checked again)"),
        ("reject", "turn a waiting proposal down"),
        ("revert", "undo an applied action"),
    ):
        sub.add_parser(step, help=help_text).add_argument("proposal_id")

    intents = hub.add_parser("intents", help="an operator's intent in plain words -> proposals to approve")
    intents.set_defaults(handler=run)
    intents.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    intents.add_argument("text")

    orchestrator = hub.add_parser("orchestrator", help="the orchestrator's status and audit log")
    orchestrator.set_defaults(handler=run)
    orchestrator.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    osub = orchestrator.add_subparsers(dest="orchestrator_command", required=True)
    osub.add_parser("status", help="mode, language model, decision-cache hit rate, proposals by state")
    osub.add_parser("snapshot", help="what the orchestrator sees now")
    audit = osub.add_parser("audit", help="the hash-chained audit log")
    audit.add_argument("--after", type=int, default=0, help="entries after this sequence number")
    audit.add_argument("--verify", action="store_true", help="check the hash chain (exit 1 if broken)")
