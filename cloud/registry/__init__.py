"""The model registry: versions with their metadata, content-addressed artifacts, and status."""

from cloud.errors import IllegalStatusChange, ModelExists, ModelNotFound, RegistryError
from cloud.registry.models import ModelSpec, ModelStatus, ModelUpdate, ModelVersion
from cloud.registry.store import Registry, SqliteRegistry

__all__ = [
    "IllegalStatusChange",
    "ModelExists",
    "ModelNotFound",
    "ModelSpec",
    "ModelStatus",
    "ModelUpdate",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "SqliteRegistry",
]
