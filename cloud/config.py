"""The hub's settings. Also the typed argument of ``cloud.app:build_app`` for ``serve run``."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from cloud.database import Location, PostgresLocation
from cloud.inputs import InputLimits
from cloud.orchestrator.config import OrchestratorConfig
from cloud.routing.config import RoutingConfig, load_routing, single_model_routing
from common.config import StrictModel, read_yaml_mapping
from common.errors import ConfigError
from common.tls import TlsFiles


class CallbackRule(StrictModel):
    """Results for the devices matching ``devices`` are POSTed to ``url`` instead of going out on MQTT."""

    devices: str = Field(description="device ids this rule covers: a glob, e.g. kiosk-* (first matching rule wins)")
    url: str = Field(
        pattern=r"^https?://", description="where each EscalationResult is POSTed; a 2xx reply acknowledges it"
    )
    encoding: Literal["json", "protobuf"] = Field(
        "json", description="body: JSON (application/json) or protobuf (application/x-protobuf)"
    )
    timeout_ms: int = Field(5000, gt=0, description="how long one POST may take before it counts as failed")
    headers: dict[str, str] = Field({}, description="extra request headers, e.g. Authorization")


class DeliveryConfig(StrictModel):
    """How results reach devices, and how often they are sent again until the device acknowledges them."""

    resend_after_s: float = Field(
        30.0, gt=0, description="a result not acknowledged this long after it went out is sent again (then doubling)"
    )
    max_sends: int = Field(
        6, ge=1, description="sends per result, the first included; after the last it waits in the trace store"
    )
    callbacks: list[CallbackRule] = Field([], description="devices whose results go to an HTTP endpoint, not MQTT")


class Role(str, enum.Enum):
    """What an operator may do through the admin API (``cloud.api.access`` maps each role to its permissions)."""

    VIEWER = "viewer"  # read: settings, audit, rollouts, the orchestrator
    OPERATOR = "operator"  # + settings, bundles, rollouts, orchestrator proposals and intents
    APPROVER = "approver"  # read + approve, reject and revert orchestrator proposals
    ADMIN = "admin"  # everything


class TenantConfig(StrictModel):
    """A customer sharing the hub: its devices (by id), the groups it owns, its quotas and its priority."""

    devices: list[str] = Field(
        min_length=1,
        description="globs on device ids that are this tenant's, e.g. acme-* (a secured hub proves each id with "
        "a certificate); the first tenant whose globs match a device owns it",
    )
    groups: list[str] = Field([], description="device groups this tenant owns: its operators see and change these only")
    escalations_per_s: Optional[float] = Field(
        None, gt=0, description="quota: escalations accepted per second, over all its devices; none: no quota"
    )
    escalations_burst: Optional[float] = Field(
        None, gt=0, description="escalations accepted at once above the rate (default: one second's worth)"
    )
    max_stored_traces: Optional[int] = Field(
        None, gt=0, description="quota: traces the hub keeps for it; past it new escalations wait (RESOURCE_EXHAUSTED)"
    )
    priority: int = Field(
        0, ge=0, le=9, description="when the models are saturated, a higher priority's escalations run first"
    )
    max_model_bytes: Optional[int] = Field(
        None, gt=0, description="quota: bytes of the model files its registered versions hold; none: no quota"
    )


class QuotaConfig(StrictModel):
    """Limits for every client, tenant or not: one device or one token cannot starve the rest."""

    device_escalations_per_s: Optional[float] = Field(
        None, gt=0, description="escalations accepted per second from one device; none: no limit"
    )
    device_escalations_burst: Optional[float] = Field(
        None, gt=0, description="escalations one device may send at once above its rate (default: one second's worth)"
    )
    operator_requests_per_s: float = Field(
        20.0, gt=0, description="admin API requests per second per operator token (429 past it, with Retry-After)"
    )
    operator_requests_burst: float = Field(60.0, gt=0, description="admin API requests one token may make at once")
    max_concurrent_runs: int = Field(
        256, ge=1, description="escalations routed to models at once; past it they wait, higher priority first"
    )


class OperatorConfig(StrictModel):
    """One operator: the sha256 of their bearer token (never the token), their role, and the groups they act on."""

    token_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 (hex) of the bearer token; `tandem hub token` makes both"
    )
    role: Role = Field(description="viewer, operator, approver or admin")
    groups: list[str] = Field(
        [], description="device groups this operator may change; empty: every group and the hub-wide settings"
    )
    tenant: Optional[str] = Field(
        None,
        description="the tenant this operator works for: they see only its devices, traces and groups (their "
        "groups default to the tenant's) and make no hub-wide change",
    )


class FleetConfig(StrictModel):
    """The device inventory and the admin API."""

    silent_after_s: float = Field(
        30.0, gt=0, description="a device with no message for this long is shown as silent, whatever it last said"
    )
    sleep_after_s: float = Field(
        300.0, gt=0, description="a device that has not escalated for this long goes to session SLEEP"
    )
    check_every_s: float = Field(5.0, gt=0, description="how often sessions are checked for SLEEP")
    preload: bool = Field(True, description="load the models a new device's routes need when it first appears")
    keys_path: Optional[Path] = Field(
        None,
        description="folder of the bundle-signing keys (tandem hub keys init); default: tandem-keys beside the traces",
    )
    bundles_path: Optional[Path] = Field(
        None, description="folder of the model bundles; default: bundles beside the traces"
    )
    public_url: Optional[str] = Field(
        None, description="the URL devices fetch bundle files from; default http://{http_host}:{http_port}"
    )
    operators: dict[str, OperatorConfig] = Field(
        {},
        description="operator name: {token_sha256, role, groups} for the admin API (Authorization: Bearer TOKEN); "
        "every change is recorded with the name. Empty: the admin API is open and changes are recorded as "
        "'anonymous'",
    )

    @field_validator("operators", mode="before")
    @classmethod
    def _no_plain_tokens(cls, value: object) -> object:
        if isinstance(value, dict):
            plain = sorted(name for name, entry in value.items() if isinstance(entry, str))
            if plain:
                raise ValueError(
                    f"operators {plain} give a token in plain text; give {{token_sha256, role}} instead "
                    "(tandem hub token --role ROLE prints a new token and its entry)"
                )
        return value


class AlertConfig(StrictModel):
    """What the fleet console raises as an alert, and where else it goes."""

    silent_after_s: float = Field(
        120.0, gt=0, description="a device with no message for this long raises an alert (cleared when it speaks)"
    )
    escalation_jump: float = Field(
        3.0, gt=1, description="a device escalating this many times its own usual rate raises an alert"
    )
    escalation_jump_min_per_s: float = Field(
        0.5, ge=0, description="...and at least this many escalations/s (a jump from 0.01 to 0.05 is not one)"
    )
    webhook_url: Optional[str] = Field(
        None, description="each alert raised or cleared is POSTed here as JSON (none: shown on the console only)"
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="how long one webhook POST may take")


class ConsoleConfig(StrictModel):
    """The fleet console: web pages under /console, behind the admin API's roles."""

    enabled: bool = Field(True, description="serve the console under /console")
    trace_images_kept: int = Field(
        2000, ge=0, description="finished traces whose escalated image the hub keeps, newest first (about 50 kB each)"
    )
    hard_examples_kept: int = Field(
        5000, ge=0, description="unlabelled hard examples kept, newest first (labelled ones are always kept)"
    )
    check_every_s: float = Field(5.0, gt=0, description="how often alerts are checked and images forgotten")
    alerts: AlertConfig = Field(AlertConfig(), description="what raises an alert, and the webhook")


class SecurityConfig(StrictModel):
    """A secured hub: devices prove who they are with certificates from the fleet CA (README, "Securing a fleet")."""

    pki_path: Path = Field(description="folder of the fleet CA (tandem hub pki init): the CA, the hub's certificates")
    grpc_port: int = Field(
        9443, gt=0, lt=65536, description="devices' gRPC port: TLS, a client certificate required, id checked"
    )
    grpc_host: str = Field("[::]", description="address the devices' gRPC port listens on")
    broker_acl_path: Optional[Path] = Field(
        None,
        description="the devices' ACL file Mosquitto reads (acl_file of its device listener), rewritten on every "
        "enrolment and revocation; none: the hub leaves the broker alone",
    )
    broker_reload_command: list[str] = Field(
        ["systemctl", "reload", "mosquitto"],
        description="run after the ACL or the CRL changed, so the broker reads them again (SIGHUP)",
    )
    enrolment_ttl_s: float = Field(3600.0, gt=0, description="how long an enrolment token stays usable by default")

    def absolute(self) -> SecurityConfig:
        return self.model_copy(
            update={
                "pki_path": self.pki_path.resolve(),
                "broker_acl_path": self.broker_acl_path.resolve() if self.broker_acl_path else None,
            }
        )


DATABASE_URL_ENV = "TANDEM_DATABASE_URL"


class PoolAutoscaling(StrictModel):
    """Serve's autoscaling of the ModelPool deployment (model_pool: serve), as Ray Serve's autoscaling_config."""

    min_replicas: int = Field(1, ge=0, description="replicas kept however quiet it is")
    max_replicas: int = Field(4, ge=1, description="replicas at most")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="requests per replica Serve aims for: more for long, it scales out"
    )
    upscale_delay_s: float = Field(10.0, ge=0, description="how long the load must stay above target to scale out")
    downscale_delay_s: float = Field(60.0, ge=0, description="how long it must stay below to scale back in")

    @model_validator(mode="after")
    def _bounds(self) -> PoolAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class HubConfig(StrictModel):
    app_name: str = Field("tandem", description="the Ray Serve application name; devices send it as gRPC metadata")
    http_host: str = Field("127.0.0.1", description="address Ray Serve's HTTP proxy listens on")
    http_port: int = Field(8000, gt=0, lt=65536, description="HTTP port: /v1/traces and /healthz")
    grpc_port: int = Field(9000, gt=0, lt=65536, description="gRPC port: tandem.v1.Escalation")
    mqtt_host: str = Field("127.0.0.1", description="the MQTT broker results are published to")
    mqtt_port: int = Field(1883, gt=0, lt=65536, description="the MQTT broker's port")
    mqtt_username: str = Field("tandem-hub", description="MQTT user name (and client id) of the hub")
    mqtt_password: Optional[str] = Field(None, description="MQTT password, if the broker asks for one")
    model_path: Optional[Path] = Field(
        None, description="the one ONNX model every escalation goes to, when no routing_path is given"
    )
    routing_path: Optional[Path] = Field(
        None, description="routing rules (deploy/cloud/routing.yaml); tandem hub run reloads them when the file changes"
    )
    max_models_per_replica: int = Field(
        4, ge=1, description="models one ModelPool replica keeps loaded; the least recently used is evicted"
    )
    trace_store_path: Path = Field(Path("tandem-hub.db"), description="SQLite file of the hub's traces")
    database_url: Optional[str] = Field(
        None,
        description="PostgreSQL (postgresql://user:password@host:port/db) for every store instead of the SQLite "
        "files, each store in a schema of its own: what lets several Ingress replicas, on any nodes, share one "
        "hub's state. The files named by the *_path settings are then unused (artifacts_path stays: a volume every "
        "replica mounts). Unset: $TANDEM_DATABASE_URL, if set where the replicas run (a Kubernetes secret: the URL then"
        " stays out of Serve's deploy config)",
    )
    trace_retention_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="finished traces older than this are deleted, unless their result is still being resent",
    )
    registry_path: Optional[Path] = Field(
        None, description="SQLite file of the model registry; default: tandem-registry.db beside the trace store"
    )
    artifacts_path: Optional[Path] = Field(
        None, description="folder of model artifacts, named by sha256; default: artifacts/ beside the trace store"
    )
    result_encoding: Literal["protobuf", "json"] = Field(
        "protobuf", description="how results are published: protobuf (compact) or JSON (readable with mosquitto_sub)"
    )
    replica_num_cpus: float = Field(0.25, gt=0, description="CPUs Ray reserves for each replica")
    ingress_replicas: int = Field(
        1,
        ge=1,
        description="Ingress replicas (each a whole hub: gRPC, MQTT intake, delivery, the admin API); more than one"
        " needs database_url, so that they share the traces, claims and fleet",
    )
    model_num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs Ray reserves for each ModelPool replica (1 on a GPU node; with onnxruntime-gpu installed,"
        " ONNX Runtime then runs on the CUDA execution provider)",
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="largest escalation accepted, on gRPC, MQTT and HTTP (gRPC RESOURCE_EXHAUSTED, HTTP 413, a FAILED"
        " result on MQTT); devices send at most transport.max_message_bytes, so keep that at or below this",
    )
    max_image_pixels: int = Field(
        7680 * 4320,
        gt=0,
        description="an escalated image whose header declares more pixels than this is refused without decoding "
        "(INVALID_ARGUMENT)",
    )
    model_pool: Literal["serve", "ingress"] = Field(
        "serve",
        description="where the hub's own models run: serve, a ModelPool deployment of their own (autoscaled, on GPU "
        "nodes); ingress, inside each Ingress replica (one Serve hop and one process fewer per escalation, for a "
        "CPU hub; scale it with ingress_replicas). Batching works the same in both",
    )
    pool_autoscaling: Optional[PoolAutoscaling] = Field(
        None,
        description="model_pool serve: Serve scales the ModelPool between these bounds on its queue, and drains a "
        "replica it removes (in-flight requests finish); none: one replica (or what serve.yaml sets)",
    )
    batch_max_size: int = Field(16, ge=1, description="the model runs up to this many requests as one batch")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill before it runs")
    model_max_ongoing_requests: int = Field(
        64, ge=1, description="requests a model replica takes at once; above batch_max_size, or batches cannot fill"
    )
    delivery: DeliveryConfig = Field(DeliveryConfig(), description="result resends and HTTP callbacks")
    fleet: FleetConfig = Field(FleetConfig(), description="the device inventory, sessions and the admin API")
    console: ConsoleConfig = Field(ConsoleConfig(), description="the fleet console's pages, images kept, and alerts")
    fleet_path: Optional[Path] = Field(
        None, description="SQLite file of the device inventory, settings and audit log (default: beside the traces)"
    )
    orchestrator: OrchestratorConfig = Field(
        OrchestratorConfig(), description="the rules and language model that steer routing, thresholds and replicas"
    )
    ray_address: Optional[str] = Field(
        None, description="join this Ray cluster instead of starting a local one (tandem hub run: $RAY_ADDRESS)"
    )
    tenants: dict[str, TenantConfig] = Field(
        {}, description="customers sharing this hub, each isolated, with quotas and a priority (README, Tenants)"
    )
    quotas: QuotaConfig = Field(QuotaConfig(), description="rate limits per device and per operator token")
    security: Optional[SecurityConfig] = Field(
        None,
        description="TLS and device identities: devices escalate on security.grpc_port with certificates, the hub "
        "reaches the broker over TLS as tandem-hub (mqtt_port: the broker's hub listener), and Serve's plain gRPC "
        "port no longer takes escalations. None: plain text everywhere (the demo, tests that say so)",
    )

    @model_validator(mode="after")
    def _has_models(self) -> HubConfig:
        if self.model_path is None and self.routing_path is None:
            raise ValueError("give model_path (one model for everything) or routing_path (routing rules)")
        return self

    @model_validator(mode="after")
    def _tenants_hold_together(self) -> HubConfig:
        for name, entry in self.fleet.operators.items():
            if entry.tenant is None:
                continue
            tenant = self.tenants.get(entry.tenant)
            if tenant is None:
                raise ValueError(f"operator {name}: no tenant {entry.tenant!r} under tenants")
            outside = sorted(set(entry.groups) - set(tenant.groups))
            if outside:
                raise ValueError(f"operator {name}: groups {outside} are not tenant {entry.tenant}'s")
        owners: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for group in tenant.groups:
                if group in owners:
                    raise ValueError(f"group {group!r} belongs to tenants {owners[group]} and {name}")
                owners[group] = name
        return self

    @model_validator(mode="after")
    def _replicas_share_a_database(self) -> HubConfig:
        if self.ingress_replicas > 1 and self.database() is None:
            raise ValueError(
                f"ingress_replicas is {self.ingress_replicas}, but SQLite files cannot be shared between replicas:"
                " set database_url (PostgreSQL)"
            )
        return self

    @model_validator(mode="after")
    def _batches_can_fill(self) -> HubConfig:
        if self.model_max_ongoing_requests < self.batch_max_size:
            raise ValueError(
                f"model_max_ongoing_requests ({self.model_max_ongoing_requests}) is below batch_max_size "
                f"({self.batch_max_size}): a batch could never fill"
            )
        return self

    def absolute(self) -> HubConfig:
        """Paths made absolute: Ray replicas do not run in the caller's working folder."""
        return self.model_copy(
            update={
                "model_path": self.model_path.resolve() if self.model_path else None,
                "routing_path": self.routing_path.resolve() if self.routing_path else None,
                "trace_store_path": self.trace_store_path.resolve(),
                "registry_path": self.registry_file().resolve(),
                "fleet_path": self.fleet_file().resolve(),
                "orchestrator": self.orchestrator.model_copy(update={"audit_path": self.orchestrator_file().resolve()}),
                "fleet": self.fleet.model_copy(
                    update={"keys_path": self.keys_dir().resolve(), "bundles_path": self.bundles_dir().resolve()}
                ),
                "artifacts_path": self.artifacts_dir().resolve(),
                "security": self.security.absolute() if self.security else None,
            }
        )

    def routing(self) -> RoutingConfig:
        """The rules: the routing file's, else every escalation to model_path."""
        if self.routing_path is not None:
            return load_routing(self.routing_path)
        if self.model_path is None:  # the validator above rules this out
            raise ConfigError("no model_path and no routing_path")
        return single_model_routing(self.model_path)

    def database(self) -> Optional[str]:
        """The PostgreSQL URL the stores use: database_url, else $TANDEM_DATABASE_URL; None: SQLite files."""
        return self.database_url or os.environ.get(DATABASE_URL_ENV) or None

    def location(self, store: Literal["traces", "registry", "fleet", "rollouts", "orchestrator"]) -> Location:
        """Where a store keeps its tables: its schema in database_url, else its SQLite file."""
        url = self.database()
        if url is not None:
            return PostgresLocation(url, store)
        files = {
            "traces": self.trace_store_path,
            "registry": self.registry_file(),
            "fleet": self.fleet_file(),
            "rollouts": self.fleet_file(),
            "orchestrator": self.orchestrator_file(),
        }
        return files[store]

    def registry_file(self) -> Path:
        return self.registry_path or self.trace_store_path.with_name("tandem-registry.db")

    def fleet_file(self) -> Path:
        return self.fleet_path or self.trace_store_path.with_name("tandem-fleet.db")

    def orchestrator_file(self) -> Path:
        return self.orchestrator.audit_path or self.trace_store_path.with_name("tandem-orchestrator.db")

    def keys_dir(self) -> Path:
        return self.fleet.keys_path or self.trace_store_path.parent / "tandem-keys"

    def bundles_dir(self) -> Path:
        return self.fleet.bundles_path or self.trace_store_path.parent / "bundles"

    def public_url(self) -> str:
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        scheme = "https" if self.security is not None else "http"
        return (self.fleet.public_url or f"{scheme}://{host}:{self.http_port}").rstrip("/")

    def http_options(self) -> dict[str, Any]:
        """Serve's HTTP proxy: HTTPS with the fleet CA's server certificate when secured (operators' tokens and
        enrolment tokens never cross the network in plain text)."""
        options: dict[str, Any] = {"host": self.http_host, "port": self.http_port}
        if self.security is not None:
            folder = self.security.pki_path
            options |= {"ssl_certfile": str(folder / "server.pem"), "ssl_keyfile": str(folder / "server.key")}
        return options

    def artifacts_dir(self) -> Path:
        return self.artifacts_path or self.trace_store_path.parent / "artifacts"

    def mqtt_tls(self) -> Optional[TlsFiles]:
        """The hub's own MQTT identity (the fleet CA's hub.pem), when secured."""
        if self.security is None:
            return None
        folder = self.security.pki_path
        return TlsFiles(ca_path=folder / "ca.pem", cert_path=folder / "hub.pem", key_path=folder / "hub.key")

    def input_limits(self) -> InputLimits:
        return InputLimits(self.max_request_bytes, self.max_image_pixels)


def load_hub_config(path: Path) -> dict[str, Any]:
    """A hub YAML file as settings; relative paths in it are taken from the file's folder."""
    raw = read_yaml_mapping(path, empty_ok=True)
    for key in ("model_path", "routing_path", "trace_store_path", "registry_path", "artifacts_path", "fleet_path"):
        if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
            raw[key] = str(path.parent / raw[key])
    for section, key in (
        ("fleet", "keys_path"),
        ("fleet", "bundles_path"),
        ("orchestrator", "audit_path"),
        ("security", "pki_path"),
        ("security", "broker_acl_path"),
    ):
        found = raw.get(section)
        if isinstance(found, dict) and isinstance(found.get(key), str) and not Path(found[key]).is_absolute():
            found[key] = str(path.parent / found[key])
    return raw
