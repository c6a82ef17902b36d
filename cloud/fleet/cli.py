"""``tandem hub devices ...`` and ``tandem hub settings ...``: the fleet through the hub's HTTP API.

    tandem hub devices list [--group G] [--tag T] [--class C] [--status online|silent|offline] [--model M]
    tandem hub devices show ID
    tandem hub settings show
    tandem hub settings set (all | group G | tag T | device ID) judge.confidence_threshold=0.8 ...
    tandem hub settings clear (all | group G | tag T | device ID)
    tandem hub audit [--limit N]

A value is read as JSON when it parses (0.8, true, ["a","b"]) and as a string otherwise (png).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from cloud.client import HubHttpError, default_url, request


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _row(d: dict[str, Any]) -> str:
    model = d["model"] or {}
    beat = d["telemetry"] or {}
    fps = f"{beat['fps']:.1f}" if "fps" in beat else "-"
    sync = "in sync" if d["in_sync"] else f"desired v{d['desired']['version']}"
    return (
        f"{d['device_id']:<20} {d['status']:<8} {_age(d['last_seen_age_s']):>5} {d['group'] or '-':<12} "
        f"{d['session']:<6} {model.get('model_id', '-'):<16} {model.get('backend', '-'):<34} fps={fps:<6} "
        f"settings v{d['reported']['applied_version']} ({sync})"
    )


def _devices_list(base: str, args: argparse.Namespace) -> int:
    query = {
        k: v
        for k, v in (
            ("group", args.group),
            ("tag", args.tag),
            ("device_class", args.device_class),
            ("status", args.status),
            ("model", args.model),
        )
        if v
    }
    devices = request(f"{base}/v1/devices?{urllib.parse.urlencode(query)}", "GET")
    for d in devices:
        print(_row(d))
    print(f"{len(devices)} devices")
    return 0


def _devices_show(base: str, args: argparse.Namespace) -> int:
    print(json.dumps(request(f"{base}/v1/devices/{urllib.parse.quote(args.device_id)}", "GET"), indent=2))
    return 0


def parse_assignments(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``section.field=value`` pairs -> {section: {field: value}}; ValueError names a bad one."""
    settings: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise ValueError(f"{pair!r}: expected section.field=value, e.g. judge.confidence_threshold=0.8")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        settings.setdefault(section, {})[name] = value
    return settings


def _scope(args: argparse.Namespace) -> tuple[str, str]:
    if args.scope == "all":
        if args.target:
            raise ValueError("scope all takes no name")
        return "all", ""
    if not args.target:
        raise ValueError(f"scope {args.scope} needs a name")
    return args.scope, args.target[0]


def _settings_set(base: str, args: argparse.Namespace, settings: dict[str, dict[str, Any]]) -> int:
    scope, name = _scope(args)
    body = json.dumps({"name": name, "settings": settings}).encode()
    reply = request(f"{base}/v1/admin/settings/{scope}", "PUT", body)
    print(f"{scope} {name or '*'}: {len(reply['devices'])} devices get a new desired version")
    for device_id in reply["devices"]:
        print(f"  {device_id}")
    return 0


def _settings(base: str, args: argparse.Namespace) -> int:
    if args.settings_command == "show":
        for layer in request(f"{base}/v1/admin/settings", "GET"):
            name, by = layer["name"] or "*", layer["updated_by"]
            print(f"{layer['scope']:<7} {name:<16} {json.dumps(layer['settings'])}  ({by})")
        return 0
    if args.settings_command == "clear":
        args.target = [args.target] if args.target else []
        return _settings_set(base, args, {})
    target, pairs = _split_target(args.scope, args.rest)
    args.target = target
    return _settings_set(base, args, parse_assignments(pairs))


def _split_target(scope: str, rest: list[str]) -> tuple[list[str], list[str]]:
    """``settings set group lobby a.b=1``: the name (if the scope takes one), then the assignments."""
    if scope == "all" or not rest or "=" in rest[0]:
        return [], rest
    return rest[:1], rest[1:]


def _audit(base: str, args: argparse.Namespace) -> int:
    for entry in request(f"{base}/v1/admin/audit?limit={args.limit}", "GET"):
        detail = json.dumps(entry["detail"])
        print(f"{entry['at']:.0f} {entry['who']:<12} {entry['action']:<10} {entry['target']:<24} {detail}")
    return 0


def run(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    commands = {
        "devices": lambda: _DEVICES[args.devices_command],
        "settings": lambda: _settings,
        "audit": lambda: _audit,
    }
    try:
        return commands[args.hub_command]()(base, args)
    except (HubHttpError, ValueError) as exc:
        print(f"tandem hub {args.hub_command}: {exc}", file=sys.stderr)
        return 1


_DEVICES = {"list": _devices_list, "show": _devices_show}
SCOPES = ["all", "group", "tag", "device"]


def add_parsers(hub: Any) -> None:
    """``tandem hub devices``, ``settings`` and ``audit``, on the hub's sub-parser."""
    devices = hub.add_parser("devices", help="the device inventory")
    devices.set_defaults(handler=run)
    devices.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    sub = devices.add_subparsers(dest="devices_command", required=True)
    listing = sub.add_parser("list", help="every device, filtered")
    listing.add_argument("--group")
    listing.add_argument("--tag")
    listing.add_argument("--class", dest="device_class")
    listing.add_argument("--status", choices=["online", "silent", "offline", "unknown"])
    listing.add_argument("--model", help="the active model's id")
    show = sub.add_parser("show", help="one device: report, heartbeat, desired and reported settings")
    show.add_argument("device_id")

    settings = hub.add_parser("settings", help="settings devices take from the hub, by scope")
    settings.set_defaults(handler=run)
    settings.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    ssub = settings.add_subparsers(dest="settings_command", required=True)
    ssub.add_parser("show", help="the settings of every scope")
    assign = ssub.add_parser("set", help="replace a scope's settings: SCOPE [NAME] section.field=value ...")
    assign.add_argument("scope", choices=SCOPES)
    assign.add_argument("rest", nargs="+", metavar="[NAME] section.field=value")
    clear = ssub.add_parser("clear", help="remove a scope's settings (devices go back to their own)")
    clear.add_argument("scope", choices=SCOPES)
    clear.add_argument("target", nargs="?", default=None, metavar="NAME")

    audit = hub.add_parser("audit", help="admin changes, newest first, with who made them")
    audit.set_defaults(handler=run)
    audit.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    audit.add_argument("--limit", type=int, default=50)
