"""``--no-cache-filter``: the steps of the named stages ignore the cache, the others do
not (buildx: "Do not cache specified stages"; BuildKit's Dockerfile frontend compares
stage names case-insensitively and passes over names no stage has)."""

from __future__ import annotations

from typing import Any

from lazybuild.frontend.dockerfile import plan_build
from lazybuild.frontend.dockerfile.tograph import plan_to_graph
from lazybuild.oci.platform import Platform

PLATFORM = Platform("linux", "amd64")
CONFIG: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {}}
DOCKERFILE = """\
FROM debian AS deps
RUN echo deps > /deps
FROM debian AS Build
COPY --from=deps /deps /deps
RUN echo build > /build
FROM debian
COPY --from=Build /build /build
"""


def _ignored(no_cache_stages: tuple[str, ...]) -> dict[str, bool]:
    plan = plan_build(
        DOCKERFILE,
        target_platform=PLATFORM,
        build_platform=PLATFORM,
        image_env=lambda ref, platform: [],
    )
    graph = plan_to_graph(
        plan,
        base_config=lambda ref, platform: CONFIG,
        target_platform=str(PLATFORM),
        no_cache_stages=no_cache_stages,
    )
    return {meta.description: meta.ignore_cache for meta in graph.definition.metadata.values()}


def test_only_the_named_stage_ignores_the_cache() -> None:
    ignored = _ignored(("build", "no-such-stage"))
    # The base image is not a step of the stage alone (every stage FROM debian shares
    # its vertex); its first step reruns, and the solver reruns what follows it.
    assert {d for d, ignore in ignored.items() if ignore} == {
        "[build 2/3] COPY --from=deps /deps /deps",
        "[build 3/3] RUN echo build > /build",
    }
    assert not ignored["[deps 2/2] RUN echo deps > /deps"]


def test_no_filter_ignores_nothing() -> None:
    assert not any(_ignored(()).values())
