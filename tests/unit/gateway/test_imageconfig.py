"""A frontend's image config is data checked once: OCI-shaped, JSON, bounded, frozen."""

from __future__ import annotations

from typing import Any

import pytest

from lazybuild.gateway import MAX_CONFIG_BYTES
from lazybuild.gateway.imageconfig import InvalidImageConfigError, image_config


def test_a_valid_config_is_kept_as_given_and_cannot_be_changed_through_it() -> None:
    given: dict[str, Any] = {
        "config": {
            "Entrypoint": ["/app"],
            "Cmd": None,
            "Env": ["PATH=/bin"],
            "Labels": {"a": "b"},
            "ExposedPorts": {"80/tcp": {}},
        },
        "history": [{"created_by": "go build", "comment": "x"}],
        "author": "me",
        "variant": "kept",
    }
    config = image_config(given)
    assert config.to_oci_config() == given
    given["config"]["Entrypoint"].append("changed")
    config["config"]["Env"].append("X=1")
    config.to_oci_config()["history"].clear()
    assert config["config"]["Entrypoint"] == ["/app"]
    assert config["config"]["Env"] == ["PATH=/bin"]
    assert len(config["history"]) == 1
    assert dict(config) == config.to_oci_config()


def test_an_empty_config_is_an_image_with_no_settings() -> None:
    assert image_config({}).to_oci_config() == {}


def test_tuples_become_the_lists_json_has() -> None:
    config = image_config({"config": {"Cmd": ("a", "b")}})
    assert config["config"]["Cmd"] == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "a NoneType, not a dict"),
        (["config"], "a list, not a dict"),
        ({"config": {"Env": {1, 2}}}, "not JSON"),
        ({"config": {"Env": "PATH=/bin"}}, "config.Env must be a list of strings"),
        ({"config": {"Env": ["=x"]}}, "has no name"),
        ({"config": {"Entrypoint": "/app"}}, "config.Entrypoint must be a list of strings"),
        ({"config": {"Cmd": [1]}}, "config.Cmd must be a list of strings"),
        ({"config": {"User": 0}}, "config.User must be a string"),
        ({"config": {"Labels": {"a": 1}}}, "config.Labels must map names to strings"),
        ({"config": {"ExposedPorts": {"80": 1}}}, "config.ExposedPorts must map names to {}"),
        ({"config": []}, "config must be an object"),
        ({"history": {}}, "history must be a list"),
        ({"history": ["RUN x"]}, "history entry 0 must be an object"),
        ({"history": [{"empty_layer": "yes"}]}, "empty_layer must be a boolean"),
        ({"author": 7}, "author must be a string"),
        ({"config": {"Cmd": [float("nan")]}}, "not JSON"),
    ],
)
def test_garbage_is_refused_with_where_it_is(value: object, reason: str) -> None:
    with pytest.raises(InvalidImageConfigError) as failure:
        image_config(value)
    assert reason in str(failure.value)


def test_a_config_over_the_bound_is_refused() -> None:
    huge = {"config": {"Env": [f"K{n}=" + "v" * 1000 for n in range(MAX_CONFIG_BYTES // 1000)]}}
    with pytest.raises(InvalidImageConfigError, match="over the limit"):
        image_config(huge)
