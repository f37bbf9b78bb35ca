"""The Go module in the build context → its static binary, alone on an empty image.

The graph, in BuildKit's terms: the golang builder image (mounted lazily by the
worker) runs ``go build`` with ``CGO_ENABLED=0``, ``GOPROXY=off`` and no network, the
context bind-mounted read-only at ``/src`` and Go's build and module caches as cache
mounts (the ids the go-ci example's Dockerfile uses, so both share them); the binary
alone is then copied onto scratch and becomes the ENTRYPOINT. Before that, the context
is solved once and its ``go.mod`` read through the gateway, to fail early without one
and to name the binary after the module; the second solve finds that source cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lazybuild.gateway import FrontendError, FrontendResult, Gateway, GatewayError
from lazybuild.graph import OpMetadata, RunMount, SourceLocation, State, copy, marshal
from lazybuild_gomodule.buildfile import binary_name, module_path, parse_build_file

__all__ = ["build"]

_GOCACHE = "/root/.cache/go-build"
_GOMODCACHE = "/go/pkg/mod"
_HISTORY_COMMENT = "lazybuild.gomodule.v0"


async def build(gateway: Gateway) -> FrontendResult:
    inputs = gateway.inputs
    wanted = parse_build_file(inputs.source, inputs.source_name)
    context = State.local(
        inputs.context,
        exclude_patterns=inputs.context_excludes,
        metadata=OpMetadata(description="[gomodule] load build context"),
    )
    source_ref = await gateway.solve(marshal(context))
    try:
        go_mod = await gateway.read_file(source_ref, "go.mod")
    except GatewayError:
        raise FrontendError("the build context holds no go.mod: not a Go module") from None
    module = module_path(go_mod)
    if module is None:
        raise FrontendError("go.mod has no module directive")
    binary = wanted.binary or binary_name(module)
    builder = await gateway.resolve_image_config(wanted.builder)
    compiler = State.image(builder.ref, inputs.platform)
    for key, value in _env(builder.config):
        compiler = compiler.with_env(key, value)
    for key, value in (
        ("CGO_ENABLED", "0"),
        ("GOPROXY", "off"),
        ("GOTOOLCHAIN", "local"),
        ("GOFLAGS", "-mod=readonly"),
        ("GOCACHE", _GOCACHE),
        ("GOMODCACHE", _GOMODCACHE),
    ):
        compiler = compiler.with_env(key, value)
    where = SourceLocation(inputs.source_name, 1, inputs.source.count(b"\n") or 1)
    compiled = compiler.with_dir("/src").run(
        ["go", "build", "-trimpath", "-o", f"/out/{binary}", wanted.package],
        mounts=[
            RunMount(dest="/src", source=context, readonly=True),
            RunMount(dest=_GOCACHE, kind="cache", cache_id="go-build"),
            RunMount(dest=_GOMODCACHE, kind="cache", cache_id="go-mod"),
        ],
        network="none",
        metadata=OpMetadata(
            description=f"[gomodule] go build {wanted.package} ({module})",
            source_locations=(where,),
        ),
    )
    image = State.scratch().file(
        copy(compiled.root(), f"/out/{binary}", f"/{binary}"),
        metadata=OpMetadata(description=f"[gomodule] /{binary} onto an empty image"),
    )
    ref = await gateway.solve(marshal(image))
    return FrontendResult(ref, _image_config(binary, wanted.args, module, inputs.labels))


def _env(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The builder image's environment (its PATH finds ``go``)."""
    pairs = []
    for item in (config.get("config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        if key:
            pairs.append((key, value))
    return pairs


def _image_config(
    binary: str, args: tuple[str, ...] | None, module: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    settings: dict[str, Any] = {"Entrypoint": [f"/{binary}"], "WorkingDir": "/"}
    if args is not None:
        settings["Cmd"] = list(args)
    if labels:
        settings["Labels"] = dict(labels)
    return {
        "config": settings,
        # One entry for the one layer, as Docker pairs history entries with layers.
        "history": [{"created_by": f"go build {module} → /{binary}", "comment": _HISTORY_COMMENT}],
    }
