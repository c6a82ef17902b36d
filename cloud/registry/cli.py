"""``tandem hub models ...``: the registry's REST API from a shell (standard library HTTP, nothing to install).

    tandem hub models register FILE --name N --version V --task T [--tag X ...] [--precision fp16] ...
    tandem hub models list [--task T] [--tag X] [--precision P] [--status S]
    tandem hub models show N V
    tandem hub models update N V [--status serving] [--tag X ...] [--latency-ms 3.2] [--accuracy 0.98]
    tandem hub models retire N V

``--url`` (default http://127.0.0.1:8000, or $TANDEM_HUB_URL) is the hub's HTTP address.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from cloud.client import HubHttpError, default_url, request


def _row(m: dict[str, Any]) -> str:
    tags = ",".join(m["tags"]) or "-"
    return (
        f"{m['name']:<20} {m['version']:<10} {m['task']:<16} {m['precision']:<5} {m['status']:<10} "
        f"{m['artifact_sha256'][:12]}  tags={tags}"
    )


def run(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        return _COMMANDS[args.models_command](base, args)
    except HubHttpError as exc:
        print(f"tandem hub models: {exc}", file=sys.stderr)
        return 1


def _register(base: str, args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    request(f"{base}/v1/artifacts/{digest}", "PUT", data, "application/octet-stream")
    spec = {
        "name": args.name,
        "version": args.version,
        "task": args.task,
        "tags": args.tag or [],
        "precision": args.precision,
        "device_class": args.device_class,
        "latency_ms": args.latency_ms,
        "accuracy": args.accuracy,
        "cost_per_1k": args.cost_per_1k,
        "artifact_sha256": digest,
    }
    print(_row(request(f"{base}/v1/models", "POST", json.dumps(spec).encode())))
    return 0


def _list(base: str, args: argparse.Namespace) -> int:
    query = {
        k: v
        for k, v in (
            ("task", args.task),
            ("tag", args.tag),
            ("precision", args.precision),
            ("status", args.status),
            ("name", args.name),
        )
        if v
    }
    models = request(f"{base}/v1/models?{urllib.parse.urlencode(query)}", "GET")
    for m in models:
        print(_row(m))
    print(f"{len(models)} model versions")
    return 0


def _show(base: str, args: argparse.Namespace) -> int:
    print(json.dumps(request(f"{base}/v1/models/{args.name}/{args.version}", "GET"), indent=2))
    return 0


def _update(base: str, args: argparse.Namespace) -> int:
    change = {
        k: v
        for k, v in (
            ("status", args.status),
            ("tags", args.tag),
            ("latency_ms", args.latency_ms),
            ("accuracy", args.accuracy),
            ("cost_per_1k", args.cost_per_1k),
        )
        if v is not None
    }
    print(_row(request(f"{base}/v1/models/{args.name}/{args.version}", "PATCH", json.dumps(change).encode())))
    return 0


def _retire(base: str, args: argparse.Namespace) -> int:
    print(_row(request(f"{base}/v1/models/{args.name}/{args.version}/retire", "POST", b"")))
    return 0


_COMMANDS = {"register": _register, "list": _list, "show": _show, "update": _update, "retire": _retire}


def add_parser(hub: Any) -> None:
    """``tandem hub models`` and its sub-commands, on the hub's sub-parser."""
    models = hub.add_parser("models", help="the model registry (through the hub's HTTP API)")
    models.set_defaults(handler=run)
    models.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    sub = models.add_subparsers(dest="models_command", required=True)
    register = sub.add_parser("register", help="upload a model file and register it as a version")
    register.add_argument("file", type=Path)
    register.add_argument("--name", required=True)
    register.add_argument("--version", required=True)
    register.add_argument("--task", required=True)
    register.add_argument("--tag", action="append", help="repeat for several")
    register.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    register.add_argument("--device-class", choices=["cpu", "gpu", "jetson"], default="cpu")
    register.add_argument("--latency-ms", type=float)
    register.add_argument("--accuracy", type=float)
    register.add_argument("--cost-per-1k", type=float, default=0.0)
    listing = sub.add_parser("list", help="versions, filtered")
    for flag in ("--name", "--task", "--tag", "--precision"):
        listing.add_argument(flag)
    listing.add_argument("--status", choices=["registered", "serving", "draining", "retired"])
    for name in ("show", "retire"):
        one = sub.add_parser(name, help=f"{name} one version")
        one.add_argument("name")
        one.add_argument("version")
    update = sub.add_parser("update", help="change a version's status or metadata")
    update.add_argument("name")
    update.add_argument("version")
    update.add_argument("--status", choices=["registered", "serving", "draining", "retired"])
    update.add_argument("--tag", action="append", help="the new tag list (repeat for several)")
    update.add_argument("--latency-ms", type=float)
    update.add_argument("--accuracy", type=float)
    update.add_argument("--cost-per-1k", type=float)
