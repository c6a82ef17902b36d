"""Config files as a user might get them wrong: the edge config, the hub's settings and the routing rules load,
or are refused with ConfigError / RoutingError naming the problem."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from cloud.config import HubConfig, load_hub_config
from cloud.errors import RoutingError
from cloud.routing import load_routing
from edge.config import load_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [
    (ROOT / "deploy" / "jetson" / "edge.example.yaml").read_text(),
    (ROOT / "deploy" / "cloud" / "hub.example.yaml").read_text(),
    (ROOT / "deploy" / "cloud" / "routing.yaml").read_text(),
]
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """A shipped config with one value replaced, a key removed or added; or YAML (or not) of any shape."""
    kind = draw(st.sampled_from(["edit", "text"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    data = yaml.safe_load(draw(st.sampled_from(SEEDS)))
    node = data
    path = []
    while isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str)))
        path.append(key)
        if not isinstance(node[key], dict):
            break
        node = node[key]
    if isinstance(node, dict):
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        key = path[-1] if path and path[-1] in node else draw(st.sampled_from(sorted(node, key=str) or ["x"]))
        if action == "remove":
            node.pop(key, None)
        elif action == "add":
            node[draw(st.text(max_size=8))] = draw(SCALARS)
        else:
            node[key] = draw(SCALARS | st.lists(SCALARS, max_size=3))
    return yaml.safe_dump(data)


@given(yaml_texts())
def test_the_edge_config_loads_or_names_the_problem(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "edge.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@given(yaml_texts())
def test_the_hub_settings_load_or_name_the_problem(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "hub.yaml"
    path.write_text(text)
    try:
        HubConfig.model_validate(load_hub_config(path))
    except ConfigError:
        pass
    except ValueError as exc:  # pydantic's ValidationError, which tandem hub run turns into a ConfigError
        assert "validation error" in str(exc)


@given(yaml_texts())
def test_routing_rules_load_or_name_every_problem(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "routing.yaml"
    path.write_text(text)
    try:
        load_routing(path)
    except RoutingError as exc:
        assert str(path) in str(exc)
