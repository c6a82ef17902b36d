"""``tandem hub pki ...``: the fleet CA on this machine, and device identities through the hub's API.

    tandem hub pki init --dir /etc/tandem/pki --hosts hub.example.com 10.0.0.5   the CA, the server and hub certs
    tandem hub pki list --dir /etc/tandem/pki                                    every certificate issued
    tandem hub pki token cam-17 [--ttl-s 3600]        a one-time enrolment token for a device (admin; the API)
    tandem hub pki revoke cam-17                      revoke, rewrite the broker's ACL, cut its session (the API)

``token`` and ``revoke`` go through the running hub ($TANDEM_HUB_URL, $TANDEM_HUB_TOKEN), which keeps the
broker in step; ``init`` and ``list`` read and write the folder directly.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from cloud.client import HubHttpError, default_url, request
from cloud.errors import PkiError
from cloud.security.pki import FleetCA


def _init(args: argparse.Namespace) -> int:
    ca = FleetCA.init(args.dir, hosts=args.hosts)
    print(f"fleet CA in {ca.folder}: ca.pem (give it to devices), server.pem/.key (the broker and the hub's")
    print(f"device port, for {', '.join(args.hosts)}), services-ca.pem (the broker's hub listener trusts only it),")
    print("hub.pem/.key (the hub's MQTT identity, from the services CA), crl.pem")
    print("keep ca.key and services-ca.key on this machine only; the broker's user must be able to read server.key")
    return 0


def _list(args: argparse.Namespace) -> int:
    for cert in FleetCA(args.dir).issued():
        expires = datetime.datetime.fromtimestamp(cert.not_after, datetime.timezone.utc).date()
        state = "revoked" if cert.revoked_at is not None else f"valid until {expires}"
        print(f"{cert.serial:040x}  {cert.kind:<7} {cert.name:<24} {state}")
    return 0


def _token(args: argparse.Namespace) -> int:
    body = {"device_id": args.device_id, **({"ttl_s": args.ttl_s} if args.ttl_s else {})}
    reply = request(f"{args.url}/v1/admin/enrolments", "POST", json.dumps(body).encode())
    print(f"enrolment token for {reply['device_id']} (one use): {reply['token']}")
    print(f"on the device: tandem edge enroll --hub {args.url} --token {reply['token']} --dir /etc/tandem/identity")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    reply = request(f"{args.url}/v1/admin/devices/{args.device_id}/revoke", "POST", b"")
    print(f"{reply['device_id']}: revoked {len(reply['revoked'])} certificates; its MQTT session is cut")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.pki_handler(args))
    except (PkiError, HubHttpError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def add_pki_parsers(hub: argparse._SubParsersAction) -> None:
    pki = hub.add_parser("pki", help="the fleet CA and device identities").add_subparsers(
        dest="pki_command", required=True
    )
    init = pki.add_parser("init", help="a new fleet CA, with the server's and the hub's certificates")
    init.add_argument("--dir", type=Path, required=True, help="where the CA goes (keep it private)")
    init.add_argument(
        "--hosts", nargs="+", default=["127.0.0.1", "localhost"], help="names and addresses devices reach the hub by"
    )
    init.set_defaults(handler=run, pki_handler=_init)
    listing = pki.add_parser("list", help="every certificate the CA issued")
    listing.add_argument("--dir", type=Path, required=True)
    listing.set_defaults(handler=run, pki_handler=_list)
    token = pki.add_parser("token", help="a one-time enrolment token for a device (through the hub's API)")
    token.add_argument("device_id")
    token.add_argument("--ttl-s", type=float, help="how long it stays usable (default: the hub's enrolment_ttl_s)")
    token.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    token.set_defaults(handler=run, pki_handler=_token)
    revoke = pki.add_parser("revoke", help="revoke a device's certificates and cut its session (through the API)")
    revoke.add_argument("device_id")
    revoke.add_argument("--url", default=default_url(), help="the hub's HTTP address")
    revoke.set_defaults(handler=run, pki_handler=_revoke)
