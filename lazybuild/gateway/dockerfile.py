"""The built-in Dockerfile frontend, behind the same gateway as any other frontend.

It runs in process: base images are resolved through the gateway, all at once, between
the two plans (``imagebuild.graphing``), and the graph is solved in one ``solve``. The graph
it planned stays on the object for the driver (``BuildResult.graph``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lazybuild.gateway.contract import FrontendResult, Gateway
from lazybuild.imagebuild.graphing import BuildGraph, build_graph
from lazybuild.oci.platform import Platform

__all__ = ["DockerfileFrontend"]


class DockerfileFrontend:
    def __init__(self) -> None:
        self.graph: BuildGraph | None = None

    async def __call__(self, gateway: Gateway) -> FrontendResult:
        inputs = gateway.inputs

        async def resolve(ref: str) -> Mapping[str, Any]:
            return (await gateway.resolve_image_config(ref)).config

        graph = await build_graph(
            source=inputs.source,
            filename=inputs.source_name,
            build_args=inputs.build_args,
            target=inputs.target,
            platform=Platform.parse(inputs.platform),
            labels=inputs.labels,
            excludes=inputs.context_excludes,
            resolve=resolve,
            named_contexts=inputs.named_contexts,
            no_cache_stages=inputs.no_cache_filter,
        )
        self.graph = graph
        ref = await gateway.solve(graph.graph.definition)
        return FrontendResult(ref, graph.graph.config.to_oci_config())
