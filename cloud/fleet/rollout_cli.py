"""``tandem hub keys|bundles|rollout ...``: signing keys (local files), bundles and rollouts (the hub's HTTP API).

    tandem hub keys init --root-key PATH [--keys DIR]        a root key (keep it offline) and a targets key
    tandem hub keys rotate --root-key PATH [--keys DIR]      a new targets key; bundles signed before are refused
                                                             by devices that have seen the new one
    tandem hub bundles create --name N --version V --model FILE [--golden-images DIR] [--device-class PATTERN ...]
                              [--device ID ...] [--judge section.field=value ...] [--expires-in-days D]
    tandem hub bundles list | show ID
    tandem hub rollout start BUNDLE (--group G | --tag T | --device ID ... | --class C) [--waves 0.1,0.5,1 |
                              --exponential 1,2] [--soak S] [--device-timeout S] [--watch]
    tandem hub rollout status ID [--watch] | list | pause ID | resume ID | abort ID | rollback ID

``--watch`` redraws a progress bar per wave (and each downloading device's share) until the rollout ends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from cloud.client import HubHttpError, default_url, request
from cloud.errors import KeysError
from cloud.fleet.cli import parse_assignments
from cloud.fleet.keys import init_keys, rotate_keys
from common.errors import InferenceError
from common.inference.classify import OnnxModel
from common.inference.golden import make_golden
from common.inference.preprocess import decode_image

DEFAULT_KEYS = Path("tandem-keys")
FINAL = ("COMPLETED", "ABORTED", "ROLLED_BACK")
BAR = 24


def _keys(args: argparse.Namespace) -> int:
    action = init_keys if args.keys_command == "init" else rotate_keys
    ring = action(args.keys, args.root_key)
    print(f"targets key version {ring.version} in {args.keys}")
    print(f"devices trust this root key (models.root_keys): {ring.root_public}")
    if args.keys_command == "init":
        print(f"the root private key is {args.root_key}: move it offline; it is needed again only to rotate")
    return 0


def _upload(base: str, path: Path) -> str:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    request(f"{base}/v1/artifacts/{digest}", "PUT", data, "application/octet-stream")
    return digest


def _golden(model: Path, images: Path) -> Path:
    """Golden samples from the model's own answers on these images (up to 16), written beside the model."""
    paths = sorted(p for p in images.iterdir() if p.is_file())[:16]
    frames = [decode_image(p.read_bytes()) for p in paths]
    out = model.with_name(model.stem + ".golden.npz")
    out.write_bytes(make_golden(OnnxModel(model).predict, frames))
    return out


def _bundles(base: str, args: argparse.Namespace) -> int:
    if args.bundles_command == "list":
        for b in request(f"{base}/v1/bundles", "GET"):
            classes = ",".join(b["device_classes"])
            print(f"{b['bundle_id']:<24} {b['version']:<12} release {b['release']:<5} {b['bytes']:>10} B  {classes}")
        return 0
    if args.bundles_command == "show":
        print(json.dumps(request(f"{base}/v1/bundles/{args.bundle_id}", "GET"), indent=2))
        return 0
    files: dict[str, dict[str, str]] = {"model.onnx": {"sha256": _upload(base, args.model), "role": "model"}}
    model: dict[str, Any] = {"model_id": args.model_id or args.model.stem, "kind": args.kind, "file": "model.onnx"}
    if args.golden_images is not None:
        files["golden.npz"] = {"sha256": _upload(base, _golden(args.model, args.golden_images)), "role": "golden"}
        model["golden"] = "golden.npz"
    for spec in args.engine or ():
        device_class, _, path = spec.partition("=")
        name = f"{Path(path).name}"
        files[name] = {"sha256": _upload(base, Path(path)), "role": "engine"}
        model.setdefault("engines", {})[device_class] = name
    body = {
        "name": args.name,
        "version": args.version,
        "model": model,
        "files": files,
        "device_classes": args.device_class or ["*"],
        "devices": args.device or [],
        "judge": parse_assignments(args.judge or []).get("judge", {}),
        "expires_in_days": args.expires_in_days,
    }
    made = request(f"{base}/v1/admin/bundles", "POST", json.dumps(body).encode())
    print(f"{made['bundle_id']}: release {made['release']}, {made['bytes']} bytes, signed")
    return 0


def _bar(done: float) -> str:
    filled = round(BAR * max(0.0, min(1.0, done)))
    return "[" + "#" * filled + "-" * (BAR - filled) + "]"


def render(status: dict[str, Any]) -> list[str]:
    """The rollout as lines: a bar per wave, each device not yet finished, the abort rules' values."""
    lines = [f"{status['rollout_id']} {status['state']} {status['bundle_id']}  {status['reason']}".rstrip()]
    for wave in range(status["waves"]):
        members = [d for d in status["devices"] if d["wave"] == wave]
        done = sum(d["state"] in ("active", "failed", "rolled_back", "timed_out", "reverted") for d in members)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(_count(members).items()))
        lines.append(f"  wave {wave + 1}/{status['waves']} {_bar(done / max(1, len(members)))} {counts}")
        for d in members:
            if d["state"] == "downloading":
                lines.append(f"    {d['device_id']:<20} downloading {_bar(d['progress'])} {d['progress']:.0%}")
            elif d["state"] in ("failed", "rolled_back") and d["reason"]:
                lines.append(f"    {d['device_id']:<20} {d['state']}: {d['reason']} {d['detail'][:60]}")
    rules = status["rules"]
    lines.append(
        f"  failure share {rules['failure_share']:.0%} of {rules['finished']} finished; "
        f"golden failures {rules['golden_failures']}"
    )
    return lines


def _count(members: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in members:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return counts


def _watch(base: str, rollout_id: str, watch: bool) -> int:
    shown = 0
    while True:
        status = request(f"{base}/v1/admin/rollouts/{rollout_id}", "GET")
        lines = render(status)
        if watch and shown and sys.stdout.isatty():
            sys.stdout.write(f"\x1b[{shown}F\x1b[J")  # redraw in place
        print("\n".join(lines), flush=True)
        shown = len(lines)
        if not watch or status["state"] in FINAL:
            return 0 if status["state"] != "ABORTED" else 2
        time.sleep(1.0)


def _rollout(base: str, args: argparse.Namespace) -> int:
    command = args.rollout_command
    if command == "list":
        for r in request(f"{base}/v1/admin/rollouts", "GET"):
            print(f"{r['rollout_id']:<16} {r['state']:<12} {r['bundle_id']:<20} by {r['created_by']:<10} {r['reason']}")
        return 0
    if command == "start":
        spec: dict[str, Any] = {
            "bundle_id": args.bundle_id,
            "target": {"devices": args.device or [], "group": args.group, "tag": args.tag, "device_class": args.cls},
            "soak_s": args.soak,
            "device_timeout_s": args.device_timeout,
        }
        if args.exponential:
            first, _, factor = args.exponential.partition(",")
            spec["exponential"] = {"first": int(first), "factor": float(factor or 2)}
        else:
            spec["waves"] = [float(w) for w in args.waves.split(",")]
        started = request(f"{base}/v1/admin/rollouts", "POST", json.dumps(spec).encode())
        return _watch(base, started["rollout_id"], args.watch)
    if command == "status":
        return _watch(base, args.rollout_id, args.watch)
    request(f"{base}/v1/admin/rollouts/{args.rollout_id}/{command}", "POST", b"")
    return _watch(base, args.rollout_id, False)


def run(args: argparse.Namespace) -> int:
    try:
        if args.hub_command == "keys":
            return _keys(args)
        base = args.url.rstrip("/")
        return (_bundles if args.hub_command == "bundles" else _rollout)(base, args)
    except (HubHttpError, KeysError, InferenceError, OSError, ValueError) as exc:
        print(f"tandem hub {args.hub_command}: {exc}", file=sys.stderr)
        return 1


def add_parsers(hub: Any) -> None:
    keys = hub.add_parser("keys", help="the bundle-signing keys (local files)")
    keys.set_defaults(handler=run)
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    for name, text in (("init", "make a root key and a first targets key"), ("rotate", "certify a new targets key")):
        k = ksub.add_parser(name, help=text)
        k.add_argument("--root-key", type=Path, required=True, help="the root private key (written by init)")
        k.add_argument("--keys", type=Path, default=DEFAULT_KEYS, help="the hub's keys folder (fleet.keys_path)")

    bundles = hub.add_parser("bundles", help="signed model bundles")
    bundles.set_defaults(handler=run)
    bundles.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    bsub = bundles.add_subparsers(dest="bundles_command", required=True)
    create = bsub.add_parser("create", help="upload a model (and golden samples) and have the hub sign a bundle")
    create.add_argument("--name", required=True)
    create.add_argument("--version", required=True)
    create.add_argument("--model", type=Path, required=True, help="the ONNX model")
    create.add_argument("--model-id", help="default: the file's stem")
    create.add_argument("--kind", default="classification", help="the detector kind (detector.kind)")
    create.add_argument("--golden-images", type=Path, help="a folder of images: their answers become golden samples")
    create.add_argument("--engine", action="append", metavar="CLASS=FILE", help="a TensorRT engine for a device class")
    create.add_argument("--device-class", action="append", metavar="PATTERN", help="e.g. 'jetson-orin-*' (default *)")
    create.add_argument("--device", action="append", metavar="ID", help="only these devices")
    create.add_argument("--judge", action="append", metavar="judge.FIELD=VALUE", help="judge settings with the model")
    create.add_argument("--expires-in-days", type=float, default=30.0)
    bsub.add_parser("list", help="every bundle")
    show = bsub.add_parser("show", help="one bundle's signed envelope")
    show.add_argument("bundle_id")

    rollout = hub.add_parser("rollout", help="roll a bundle out to devices in waves")
    rollout.set_defaults(handler=run)
    rollout.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)
    start = rsub.add_parser("start", help="start a rollout")
    start.add_argument("bundle_id")
    start.add_argument("--group")
    start.add_argument("--tag")
    start.add_argument("--class", dest="cls", help="a device class")
    start.add_argument("--device", action="append", metavar="ID")
    start.add_argument("--waves", default="0.1,0.5,1", help="cumulative shares, e.g. 0.1,0.5,1")
    start.add_argument("--exponential", metavar="FIRST,FACTOR", help="waves of FIRST, FIRST*FACTOR, ... devices")
    start.add_argument("--soak", type=float, default=60.0, help="seconds between a wave's end and the next")
    start.add_argument("--device-timeout", type=float, default=900.0, help="seconds a device may take")
    start.add_argument("--watch", action="store_true", help="show progress until it ends")
    status = rsub.add_parser("status", help="a rollout's waves, devices and abort rules")
    status.add_argument("rollout_id")
    status.add_argument("--watch", action="store_true")
    rsub.add_parser("list", help="every rollout")
    for action in ("pause", "resume", "abort", "rollback"):
        one = rsub.add_parser(action, help=f"{action} a rollout")
        one.add_argument("rollout_id")
