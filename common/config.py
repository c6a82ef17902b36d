"""Config helpers both sides use: the strict pydantic base, YAML reading, one-line error descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import ConfigError


class StrictModel(BaseModel):
    """A config section: unknown keys are errors (a typo is reported, not ignored), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml_mapping(path: Path, error: type[Exception] = ConfigError, empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or ``error`` naming the file and what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return raw


def describe_errors(exc: ValidationError) -> str:
    """One line per bad field: ``detector.model_path: Field required``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
