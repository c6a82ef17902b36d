"""The result cache: the same input routed the same way gets the answer already computed.

The key is the input's sha256 (with its media type, or dtype and shape), the
routing decision (rule, strategy, models, and a digest of the rules), so a
changed rule or an A/B arm that picked another model never reuses an answer,
and the device's tenant, so no tenant is ever answered from another's cache.
Entries live ``ttl_s`` and the least recently used go first past
``max_entries`` (cachetools.TTLCache does both). Per hub replica,
in memory: a restart starts cold, which costs model calls, not answers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from cloud.routing.config import Cache
from cloud.routing.steps import Plan
from protocol.messages import EncodedImage, EscalationRequest, Prediction


@dataclass(frozen=True)
class CachedAnswer:
    final: Prediction
    outputs: tuple[Prediction, ...]
    device_id: str = ""
    """The device whose escalation computed it: its entries go when it sleeps (``release``)."""


class ResultCache:
    def __init__(self, config: Cache, rules_digest: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = config.enabled
        self._digest = rules_digest
        self._entries: TTLCache[str, CachedAnswer] = TTLCache(config.max_entries, config.ttl_s, timer=clock)
        self.hits = 0
        self.misses = 0

    def key(self, request: EscalationRequest, plan: Plan, tenant: str = "") -> str:
        data = request.input
        kind = data.media_type if isinstance(data, EncodedImage) else f"{data.dtype}{list(data.shape)}"
        content = hashlib.sha256(data.data).hexdigest()
        return f"{tenant}|{content}|{kind}|{plan.describe()}|{self._digest}"

    def get(self, key: str) -> CachedAnswer | None:
        if not self.enabled:
            return None
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, answer: CachedAnswer) -> None:
        if self.enabled:
            self._entries[key] = answer

    def release(self, device_id: str) -> int:
        """Drop the entries a device's escalations computed (the device went to sleep); returns how many.
        Another device that sent the same input pays one model call for it again, nothing more."""
        mine = [key for key, answer in self._entries.items() if answer.device_id == device_id]
        for key in mine:
            self._entries.pop(key, None)
        return len(mine)

    def __len__(self) -> int:
        return len(self._entries)
