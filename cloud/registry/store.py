"""The registry's storage: a small interface, and SQLite behind it (one file, next to the hub's traces).

Artifacts are stored content-addressed, ``artifacts/<sha256>``: registering the
same bytes twice stores them once, and a version's artifact can be checked
against its recorded hash at any time.
"""

from __future__ import annotations

import abc
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from cloud.database import DuplicateKey, Location, database
from cloud.errors import IllegalStatusChange, ModelExists, ModelNotFound, RegistryError
from cloud.registry.models import TRANSITIONS, ModelSpec, ModelStatus, ModelUpdate, ModelVersion


class Registry(abc.ABC):
    @abc.abstractmethod
    def put_artifact(self, artifact: bytes) -> str:
        """Store an artifact under its sha256 (idempotent); return the hash."""

    @abc.abstractmethod
    def artifact_size(self, artifact_sha256: str) -> int:
        """Bytes of an uploaded artifact (RegistryError if there is none)."""

    @abc.abstractmethod
    def register(self, spec: ModelSpec, artifact_sha256: str) -> ModelVersion:
        """Record a new version whose artifact is already stored."""

    @abc.abstractmethod
    def get(self, name: str, version: str) -> ModelVersion: ...

    @abc.abstractmethod
    def query(
        self,
        *,
        name: Optional[str] = None,
        task: Optional[str] = None,
        tag: Optional[str] = None,
        precision: Optional[str] = None,
        status: Optional[ModelStatus] = None,
    ) -> list[ModelVersion]: ...

    @abc.abstractmethod
    def update(self, name: str, version: str, change: ModelUpdate) -> ModelVersion: ...

    @abc.abstractmethod
    def artifact(self, name: str, version: str) -> Path: ...

    def retire(self, name: str, version: str) -> ModelVersion:
        return self.update(name, version, ModelUpdate(status=ModelStatus.RETIRED))


MIGRATIONS = (
    (
        "CREATE TABLE IF NOT EXISTS models (name TEXT NOT NULL, version TEXT NOT NULL, body TEXT NOT NULL,"
        " task TEXT NOT NULL, precision TEXT NOT NULL, status TEXT NOT NULL, PRIMARY KEY (name, version))",
    ),
)


class SqliteRegistry(Registry):
    """The versions in a SQLite file or a PostgreSQL schema (``location``); the artifacts in a folder, by sha256
    (several replicas share it: a volume every replica mounts)."""

    def __init__(self, location: Location, artifacts: Path, clock: Callable[[], float] = time.time) -> None:
        self._artifacts = artifacts
        self._clock = clock
        # FULL: a registered version survives a power cut (the registry is written rarely).
        self._file = database(location, "registry", MIGRATIONS, synchronous="FULL", closed_error=RegistryError)

    def open(self) -> None:
        self._artifacts.mkdir(parents=True, exist_ok=True)
        self._file.open()

    def close(self) -> None:
        self._file.close()

    def put_artifact(self, artifact: bytes) -> str:
        if not artifact:
            raise RegistryError("the artifact is empty")
        digest = hashlib.sha256(artifact).hexdigest()
        target = self._artifacts / digest
        if not target.exists():
            partial = target.with_suffix(f".{threading.get_ident()}.partial")
            partial.write_bytes(artifact)
            partial.replace(target)  # a reader never sees half an artifact
        return digest

    def artifact_size(self, artifact_sha256: str) -> int:
        path = self._artifacts / artifact_sha256
        if not path.exists():
            raise RegistryError(f"no artifact {artifact_sha256}: upload it first (PUT /v1/artifacts/<sha256>)")
        return path.stat().st_size

    def register(self, spec: ModelSpec, artifact_sha256: str) -> ModelVersion:
        path = self._artifacts / artifact_sha256
        if not path.exists():
            raise RegistryError(f"no artifact {artifact_sha256}: upload it first (PUT /v1/artifacts/<sha256>)")
        now = self._clock()
        model = ModelVersion(
            **spec.model_dump(),
            artifact_sha256=artifact_sha256,
            artifact_bytes=path.stat().st_size,
            registered_at=now,
            updated_at=now,
        )
        with self._file.connection() as db:
            try:
                db.execute(
                    "INSERT INTO models (name, version, body, task, precision, status) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        model.name,
                        model.version,
                        model.model_dump_json(),
                        model.task,
                        model.precision,
                        model.status.value,
                    ),
                )
            except DuplicateKey as exc:
                raise ModelExists(f"{spec.name} {spec.version} is already registered") from exc
        return model

    def get(self, name: str, version: str) -> ModelVersion:
        with self._file.connection() as db:
            row = db.execute("SELECT body FROM models WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            raise ModelNotFound(f"no model {name} {version}")
        return ModelVersion.model_validate_json(row[0])

    def query(
        self,
        *,
        name: Optional[str] = None,
        task: Optional[str] = None,
        tag: Optional[str] = None,
        precision: Optional[str] = None,
        status: Optional[ModelStatus] = None,
    ) -> list[ModelVersion]:
        where: list[str] = []
        params: list[object] = []
        for column, value in (
            ("name", name),
            ("task", task),
            ("precision", precision),
            ("status", status.value if status else None),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT body FROM models" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY name, version"
        with self._file.connection() as db:
            rows = db.execute(sql, params).fetchall()
        models = [ModelVersion.model_validate_json(r[0]) for r in rows]
        return [m for m in models if tag is None or tag in m.tags]

    def update(self, name: str, version: str, change: ModelUpdate) -> ModelVersion:
        with self._file.transaction() as conn:
            row = conn.execute("SELECT body FROM models WHERE name = ? AND version = ?", (name, version)).fetchone()
            if row is None:
                raise ModelNotFound(f"no model {name} {version}")
            model = ModelVersion.model_validate_json(row[0])
            fields: dict[str, Any] = change.model_dump(exclude_none=True)
            new_status = fields.get("status")
            moving = new_status is not None and new_status != model.status
            if moving and new_status not in TRANSITIONS[model.status]:
                raise IllegalStatusChange(
                    f"{name} {version} cannot go from {model.status.value} to {ModelStatus(new_status).value}"
                )
            updated = model.model_copy(update={**fields, "updated_at": self._clock()})
            updated = ModelVersion.model_validate(updated.model_dump())  # re-check the merged fields
            conn.execute(
                "UPDATE models SET body = ?, status = ? WHERE name = ? AND version = ?",
                (updated.model_dump_json(), updated.status.value, name, version),
            )
        return updated

    def artifact(self, name: str, version: str) -> Path:
        model = self.get(name, version)
        path = self._artifacts / model.artifact_sha256
        if not path.exists():
            raise ModelNotFound(f"{name} {version}: artifact {model.artifact_sha256} is missing from {self._artifacts}")
        return path
