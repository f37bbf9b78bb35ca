"""Planning a Dockerfile against resolved base images: which images are resolved, how
often, and where a failure to resolve one is reported."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import trio

from lazybuild.errors import NotFoundError
from lazybuild.imagebuild.graphing import ImageNotResolvedError, build_graph
from lazybuild.oci.platform import host_platform


def _config(onbuild: list[str] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": ["PATH=/usr/bin:/bin"]}
    if onbuild:
        config["OnBuild"] = onbuild
    return {
        "architecture": host_platform().architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def _plan(dockerfile: str, images: Mapping[str, dict[str, Any]], asked: list[str]) -> Any:
    async def resolve(ref: str) -> Mapping[str, Any]:
        asked.append(ref)
        if ref not in images:
            raise NotFoundError(f"registry.example: {ref}: manifest unknown")
        copied: Mapping[str, Any] = json.loads(json.dumps(images[ref]))
        return copied

    async def main() -> Any:
        return await build_graph(
            source=dockerfile.encode(),
            filename="Dockerfile",
            build_args={},
            target=None,
            platform=host_platform(),
            labels={},
            excludes=(),
            resolve=resolve,
        )

    return trio.run(main)


def test_an_image_that_cannot_be_resolved_is_reported_at_its_first_line() -> None:
    dockerfile = "FROM scratch\nENV foo=bar\nCOPY --from=registry.example/test/invalid foo bar\n"
    with pytest.raises(ImageNotResolvedError, match=r"^Dockerfile:3: registry\.example"):
        _plan(dockerfile, {}, [])


def test_images_that_onbuild_triggers_bring_in_are_resolved_and_planned() -> None:
    """A trigger of the base image mounts a stage that is FROM another image: that image is
    resolved in a second round, once, and the plan uses it."""
    parent = "registry.example/parent:1"
    tool = "registry.example/tool:1"
    dockerfile = f"FROM {tool} AS helper\nRUN true\nFROM {parent}\nRUN true\n"
    trigger = "RUN --mount=from=helper,target=/helper true"
    asked: list[str] = []
    graph = _plan(dockerfile, {parent: _config([trigger]), tool: _config()}, asked)
    assert sorted(asked) == sorted({parent, tool}) and len(asked) == 2
    assert set(graph.images) == {parent, tool}
