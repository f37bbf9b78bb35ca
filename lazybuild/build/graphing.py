"""The Dockerfile as a build graph, with the base images it names resolved.

Planning needs the base images' configs (``FROM golang`` then ``WORKDIR $GOPATH``), and
which images there are is known only after ARGs are expanded, so the Dockerfile is
planned twice: once to learn the image references, which are then resolved together,
and once with their configs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from lazybuild.errors import UsageError
from lazybuild.frontend.dockerfile import parse
from lazybuild.frontend.dockerfile.stages import BaseRef, BuildPlan, plan_build
from lazybuild.frontend.dockerfile.tograph import GraphResult, plan_to_graph
from lazybuild.frontend.dockerignore import find_dockerignore, parse_dockerignore
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import ResolvedImage
from lazybuild.worker.resources import ImageResolver


@dataclass(frozen=True)
class BuildGraph:
    graph: GraphResult
    plan: BuildPlan
    excludes: tuple[str, ...]
    images: dict[str, ResolvedImage]
    ignore_file: Path | None = None  # the .dockerignore the excludes came from


def image_refs(plan: BuildPlan) -> list[str]:
    """Every registry image the plan uses: stage bases, ``COPY --from`` and mount ``from``."""
    refs: list[BaseRef] = []
    for stage in plan.stages:
        refs.append(stage.base)
        for step in stage.steps:
            if step.copy_from is not None:
                refs.append(step.copy_from)
            refs.extend(ref for ref in step.mount_from if ref is not None)
    return list(dict.fromkeys(ref.ref for ref in refs if ref.kind == "image"))


async def _resolve_all(refs: Iterable[str], resolver: ImageResolver) -> dict[str, ResolvedImage]:
    resolved: dict[str, ResolvedImage] = {}

    async def resolve(ref: str) -> None:
        resolved[ref] = await resolver.resolve(ref)

    async with trio.open_nursery() as nursery:
        for ref in refs:
            nursery.start_soon(resolve, ref)
    return resolved


def _env_pairs(config: dict[str, Any]) -> list[tuple[str, str]]:
    env = (config.get("config") or {}).get("Env") or []
    pairs = []
    for item in env:
        key, _, value = str(item).partition("=")
        pairs.append((key, value))
    return pairs


async def build_graph(
    *,
    context_dir: Path,
    dockerfile: Path,
    build_args: dict[str, str],
    target: str | None,
    platform: Platform,
    labels: dict[str, str],
    resolver: ImageResolver,
) -> BuildGraph:
    try:
        source = dockerfile.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read Dockerfile {dockerfile}: {error.strerror}") from None
    filename = dockerfile.name
    parsed = parse(source, filename=filename)
    first = plan_build(
        parsed, build_args=build_args, target=target, target_platform=platform, filename=filename
    )
    images = await _resolve_all(image_refs(first), resolver)

    def image_env(ref: str, stage_platform: str | None) -> list[tuple[str, str]]:
        return _env_pairs(images[ref].config) if ref in images else []

    def image_triggers(ref: str, stage_platform: str | None) -> list[str]:
        if ref not in images:
            return []
        return [str(t) for t in (images[ref].config.get("config") or {}).get("OnBuild") or []]

    def base_config(ref: str, stage_platform: str) -> dict[str, Any]:
        if ref not in images:
            raise UsageError(f"{filename}: image {ref} was not resolved")
        return images[ref].config

    plan = plan_build(
        parsed,
        build_args=build_args,
        target=target,
        target_platform=platform,
        image_env=image_env,
        image_triggers=image_triggers,
        filename=filename,
    )
    ignore_file = find_dockerignore(context_dir, dockerfile)
    excludes = (
        tuple(parse_dockerignore(ignore_file.read_bytes(), ignore_file.name)) if ignore_file else ()
    )
    graph = plan_to_graph(
        plan,
        base_config=base_config,
        context_excludes=excludes,
        target_platform=str(platform),
        filename=filename,
    )
    if labels:
        config = graph.config
        for key, value in labels.items():
            config = replace(config, labels=config.with_label(key, value))
        graph = replace(graph, config=config)
    return BuildGraph(graph, plan, excludes, images, ignore_file)
