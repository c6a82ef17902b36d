"""`tandem hub run --config FILE`: the file's settings, flags over them, and a bad field named."""

import argparse
from pathlib import Path

import pytest

from cloud.cli import hub_config
from cloud.database import PostgresLocation
from common.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cloud" / "hub.example.yaml"


def args(**given) -> argparse.Namespace:
    fields = {
        "config": None,
        "model": None,
        "routing": None,
        "http_port": None,
        "grpc_port": None,
        "mqtt_host": None,
        "mqtt_port": None,
        "store": None,
        "result_encoding": None,
        "database_url": None,
        "ingress_replicas": None,
        "model_pool": None,
    }
    return argparse.Namespace(**{**fields, **given})


def test_example_config_loads_with_paths_from_its_folder():
    config = hub_config(args(config=EXAMPLE))
    assert config.http_port == 8000 and config.grpc_port == 9000
    assert config.model_path == EXAMPLE.parent / "../../.tandem/demo/models/digits-strong.onnx"


def test_flags_override_the_file(tmp_path):
    config = hub_config(args(config=EXAMPLE, http_port=8100, store=tmp_path / "hub.db"))
    assert config.http_port == 8100 and config.trace_store_path == tmp_path / "hub.db"
    assert config.registry_file() == tmp_path / "tandem-registry.db"


def test_several_ingress_replicas_need_a_shared_database_and_every_store_moves_to_it():
    with pytest.raises(ConfigError, match="ingress_replicas is 2, but SQLite files cannot be shared"):
        hub_config(args(model=Path("m.onnx"), ingress_replicas=2))
    url = "postgresql://hub:secret@db:5432/tandem"
    config = hub_config(args(model=Path("m.onnx"), ingress_replicas=2, database_url=url))
    assert config.ingress_replicas == 2
    assert [config.location(s) for s in ("traces", "fleet", "rollouts")] == [
        PostgresLocation(url, "traces"),
        PostgresLocation(url, "fleet"),
        PostgresLocation(url, "rollouts"),
    ]
    assert hub_config(args(model=Path("m.onnx"))).location("rollouts") == Path("tandem-fleet.db")


def test_without_a_file_the_model_is_required_and_the_ports_default():
    with pytest.raises(ConfigError, match=r"give model_path .* or routing_path"):
        hub_config(args())
    config = hub_config(args(model=Path("m.onnx")))
    assert (config.http_port, config.grpc_port) == (8000, 9000)


def test_a_bad_field_is_named(tmp_path):
    bad = tmp_path / "hub.yaml"
    bad.write_text("model_path: m.onnx\nhttp_port: 70000\nreplicas: 3\n")
    with pytest.raises(ConfigError, match=r"http_port: .*less than 65536.*replicas: Extra inputs"):
        hub_config(args(config=bad))


def test_an_orchestrator_watching_a_model_the_rules_lack_stops_the_start(tmp_path, capsys):
    from tandem.cli import main

    config = tmp_path / "hub.yaml"
    config.write_text(
        f"model_path: {EXAMPLE.parents[2] / '.tandem' / 'demo' / 'models' / 'digits-strong.onnx'}\n"
        "orchestrator: {mode: auto, watch: [{model: gpt-huge, capacity_per_s: 5}]}\n"
    )
    assert main(["hub", "run", "--config", str(config)]) == 2
    assert "gpt-huge" in capsys.readouterr().err


def test_a_bare_off_in_yaml_means_the_orchestrator_is_off(tmp_path):
    config = tmp_path / "hub.yaml"
    config.write_text("model_path: m.onnx\norchestrator: {mode: off}\n")
    assert hub_config(args(config=config)).orchestrator.mode.value == "off"


def test_operator_tokens_are_refused_in_plain_text_and_made_by_tandem_hub_token(tmp_path, capsys):
    import hashlib

    import yaml

    from tandem.cli import main

    config = tmp_path / "hub.yaml"
    config.write_text("model_path: m.onnx\nfleet: {operators: {ana: s3cret}}\n")
    with pytest.raises(ConfigError, match=r"\['ana'\] give a token in plain text"):
        hub_config(args(config=config))
    assert main(["hub", "token", "ana", "--role", "operator", "--groups", "lobby"]) == 0
    printed = capsys.readouterr().out.splitlines()
    token = printed[0].rsplit(" ", 1)[1]
    entry = yaml.safe_load("\n".join(printed[2:]))["ana"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert entry == {"token_sha256": digest, "role": "operator", "groups": ["lobby"]}
    config.write_text(yaml.safe_dump({"model_path": "m.onnx", "fleet": {"operators": {"ana": entry}}}))
    loaded = hub_config(args(config=config)).fleet.operators["ana"]
    assert token not in config.read_text() and loaded.role.value == "operator"
