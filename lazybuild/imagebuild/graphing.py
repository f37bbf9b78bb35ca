"""The Dockerfile as a build graph, with the base images it names resolved.

Planning needs the base images' configs (``FROM golang`` then ``WORKDIR $GOPATH``), and
which images there are is known only after ARGs are expanded, so the Dockerfile is
planned twice: once to learn the image references, which are then resolved together
(``resolve``: the gateway's ``resolve_image_config``), and once with their configs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import trio

from lazybuild.errors import LazybuildError, UsageError, one_error
from lazybuild.frontend.dockerfile import parse
from lazybuild.frontend.dockerfile.stages import BaseRef, BuildPlan, plan_build
from lazybuild.frontend.dockerfile.tograph import GraphResult, plan_to_graph
from lazybuild.oci.platform import Platform

# An image reference → its OCI image config.
ResolveConfig = Callable[[str], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class BuildGraph:
    graph: GraphResult
    plan: BuildPlan
    excludes: tuple[str, ...]
    images: dict[str, Mapping[str, Any]]  # the configs of the images the plan names


# Each round resolves images that ONBUILD triggers brought in; triggers of those images
# can bring more, but a chain deeper than this is a loop, not a Dockerfile.
MAX_PLANNING_ROUNDS = 8


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


class ImageNotResolvedError(LazybuildError):
    """An image the Dockerfile names could not be resolved; the message starts with the
    first line naming it, as BuildKit points at it."""


async def _resolve_all(
    refs: Iterable[str], resolve: ResolveConfig, plan: BuildPlan, filename: str
) -> dict[str, Mapping[str, Any]]:
    resolved: dict[str, Mapping[str, Any]] = {}
    lines = plan.image_lines()

    async def one(ref: str) -> None:
        try:
            resolved[ref] = await resolve(ref)
        except LazybuildError as exc:
            line = lines.get(ref)
            if line is None:
                raise
            raise ImageNotResolvedError(f"{filename}:{line}: {exc}") from exc

    with one_error():
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(one, ref)
    return resolved


def _env_pairs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    env = (config.get("config") or {}).get("Env") or []
    pairs = []
    for item in env:
        key, _, value = str(item).partition("=")
        pairs.append((key, value))
    return pairs


async def build_graph(
    *,
    source: bytes,
    filename: str,
    build_args: Mapping[str, str],
    target: str | None,
    platform: Platform,
    labels: Mapping[str, str],
    excludes: tuple[str, ...],
    resolve: ResolveConfig,
    named_contexts: Mapping[str, str] | None = None,
    no_cache_stages: tuple[str, ...] = (),
) -> BuildGraph:
    parsed = parse(source, filename=filename)
    args = dict(build_args)
    first = plan_build(
        parsed,
        build_args=args,
        target=target,
        target_platform=platform,
        filename=filename,
        named_contexts=named_contexts,
    )
    images = dict(await _resolve_all(image_refs(first), resolve, first, filename))

    def image_env(ref: str, stage_platform: str | None) -> list[tuple[str, str]]:
        return _env_pairs(images[ref]) if ref in images else []

    def image_triggers(ref: str, stage_platform: str | None) -> list[str]:
        if ref not in images:
            return []
        return [str(t) for t in (images[ref].get("config") or {}).get("OnBuild") or []]

    def base_config(ref: str, stage_platform: str) -> dict[str, Any]:
        if ref not in images:
            raise UsageError(f"{filename}: image {ref} was not resolved")
        return dict(images[ref])

    def planned() -> BuildPlan:
        return plan_build(
            parsed,
            build_args=args,
            target=target,
            target_platform=platform,
            image_env=image_env,
            image_triggers=image_triggers,
            filename=filename,
            named_contexts=named_contexts,
        )

    plan = planned()
    # ONBUILD triggers of the base images can name images (and stages on images) the
    # first plan could not see: resolve those and plan again, until none is new.
    for _ in range(MAX_PLANNING_ROUNDS):
        new = [ref for ref in image_refs(plan) if ref not in images]
        if not new:
            break
        images.update(await _resolve_all(new, resolve, plan, filename))
        plan = planned()
    graph = plan_to_graph(
        plan,
        base_config=base_config,
        context_excludes=excludes,
        target_platform=str(platform),
        filename=filename,
        no_cache_stages=no_cache_stages,
    )
    if labels:
        config = graph.config
        for key, value in labels.items():
            config = replace(config, labels=config.with_label(key, value))
        graph = replace(graph, config=config)
    return BuildGraph(graph, plan, excludes, images)
