"""deploy/cloud: the Serve config and the RayService's inline Serve config pass Ray Serve's own schema,
and name an application whose args are valid hub settings."""

from pathlib import Path

import pytest
import yaml

from cloud.config import HubConfig

ray_schema = pytest.importorskip("ray.serve.schema", reason="the cloud extra (ray[serve]) is not installed")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cloud"


def check_serve_config(config: dict) -> None:
    ray_schema.ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "cloud.app:build_app"
    hub = HubConfig.model_validate(app["args"])
    # Serve's replica count for the Ingress is the one the hub was told (several need the shared database).
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    assert ingress.get("num_replicas", 1) == hub.ingress_replicas
    from cloud.app import GRPC_SERVICERS

    assert config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICERS


def test_serve_config_is_valid():
    check_serve_config(yaml.safe_load((DEPLOY / "serve.yaml").read_text()))


def test_rayservice_carries_a_valid_serve_config_and_gpu_workers(monkeypatch):
    service = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]}
    # The Ingress replicas share PostgreSQL: its URL comes from a secret where the hub's processes run.
    for container in (head, groups["ingress"]):
        (url,) = [e for e in container["env"] if e["name"] == "TANDEM_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": "tandem-hub-db", "key": "url"}
    monkeypatch.setenv("TANDEM_DATABASE_URL", "postgresql://hub@db/tandem")
    check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert groups["gpu"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]  # the head restarts without losing the cluster
    # Every node's gRPC proxy refuses what the hub would refuse, before it crosses Ray.
    for container in (head, *groups.values()):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(HubConfig.model_fields["max_request_bytes"].default)


def test_model_replicas_reserve_the_gpus_the_config_asks_for(tmp_path):
    from cloud.app import build_app

    app = build_app(HubConfig(model_path=tmp_path / "m.onnx", model_num_gpus=1, replica_num_cpus=0.5))
    ingress = app._bound_deployment
    (pool,) = ingress.init_args[:1]
    assert pool._bound_deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1}
    assert ingress.ray_actor_options == {"num_cpus": 0.5}  # the ingress needs no GPU


def test_the_ingress_runs_as_many_replicas_as_the_hub_is_told_and_ingress_models_need_no_pool(tmp_path):
    from cloud.app import build_app

    url = "postgresql://hub@db/tandem"
    app = build_app(HubConfig(model_path=tmp_path / "m.onnx", ingress_replicas=3, database_url=url))
    assert app._bound_deployment._deployment_config.num_replicas == 3
    local = build_app(HubConfig(model_path=tmp_path / "m.onnx", model_pool="ingress"))
    assert local._bound_deployment.init_args[0] is None  # no ModelPool deployment: the Ingress runs the models
