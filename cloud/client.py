"""The hub's HTTP API from a shell: what ``tandem hub models|devices|settings`` use (standard library only).

``--url`` (default http://127.0.0.1:8000, or $TANDEM_HUB_URL) is the hub's HTTP address; admin requests carry
``$TANDEM_HUB_TOKEN`` as the operator's bearer token when it is set; a secured hub's HTTPS is checked against
``$TANDEM_HUB_CA`` (the fleet CA's ca.pem).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any, Optional

DEFAULT_URL = "http://127.0.0.1:8000"


class HubHttpError(Exception):
    pass


def default_url() -> str:
    return os.environ.get("TANDEM_HUB_URL", DEFAULT_URL)


def request(
    url: str,
    method: str,
    body: Optional[bytes] = None,
    content_type: str = "application/json",
    token: Optional[str] = None,
    ca: Optional[str] = None,
) -> Any:
    """One call; the reply's JSON, or HubHttpError with the hub's own explanation. ``token``: the bearer token
    (default $TANDEM_HUB_TOKEN); ``ca``: the fleet CA a secured hub's HTTPS is checked against (default
    $TANDEM_HUB_CA, else the system's CAs)."""
    headers = {"Content-Type": content_type}
    token = token or os.environ.get("TANDEM_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        ca = ca or os.environ.get("TANDEM_HUB_CA")
        context = ssl.create_default_context(cafile=ca) if ca else None
        with urllib.request.urlopen(call, timeout=60, context=context) as reply:
            return json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:  # an error reply holds its connection until closed
            detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # FastAPI's {"detail": ...}; else shown as it came
            detail = json.loads(detail).get("detail", detail)
        raise HubHttpError(f"{method} {url}: {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise HubHttpError(f"{method} {url}: cannot reach the hub: {exc.reason}") from exc
