"""The hub's settings for this device, merged over its own config and validated before anything changes.

A ``Desired`` message carries sections (``judge``, ``escalation``) whose fields override the same fields of the
device's YAML (and of the judge settings that came with the active model bundle). The merged section must
validate as the device's own config would; if any section does not, the whole version is refused and the
settings in effect stay as they are. A ``preset`` sent for the judge starts the
judge section afresh from that preset (plus the other fields sent), rather than under the device's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import ValidationError

from common.config import describe_errors
from edge.config import EdgeConfig, EscalationConfig, JudgeConfig
from edge.errors import EdgeError

SECTIONS = ("judge", "escalation")


class SettingsRefused(EdgeError):
    """The hub's settings do not validate, or name something this device does not have."""


@dataclass(frozen=True)
class HotSettings:
    """What can change between two frames without a restart."""

    judge: JudgeConfig
    escalation: EscalationConfig


def merge(
    base: EdgeConfig, settings: dict[str, dict[str, Any]], bundle_judge: Optional[dict[str, Any]] = None
) -> HotSettings:
    """The device's own sections, then the active bundle's judge settings, then the hub's fields over them;
    SettingsRefused says what is wrong."""
    unknown = sorted(set(settings) - set(SECTIONS))
    if unknown:
        raise SettingsRefused(f"unknown settings sections {unknown}; this device takes {list(SECTIONS)}")
    judge = {**base.judge.model_dump(exclude_unset=True), **(bundle_judge or {})}
    hub_judge = settings.get("judge", {})
    if "preset" in hub_judge:
        judge = {}
    escalation = base.escalation.model_dump(exclude_unset=True)
    try:
        return HotSettings(
            judge=JudgeConfig.model_validate({**judge, **hub_judge}),
            escalation=EscalationConfig.model_validate({**escalation, **settings.get("escalation", {})}),
        )
    except ValidationError as exc:
        raise SettingsRefused(describe_errors(exc)) from exc


def own(base: EdgeConfig) -> HotSettings:
    """The device's settings before the hub says anything."""
    return HotSettings(base.judge, base.escalation)
