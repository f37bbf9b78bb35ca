"""``--build-context``: a FROM, ``COPY --from`` or mount ``from=`` naming a named
context gets it, over an image or a stage of that name (buildx: "When Dockerfile
defines a stage with the same name it is overwritten")."""

from __future__ import annotations

from lazybuild.frontend.dockerfile import plan_build
from lazybuild.frontend.dockerfile.stages import BaseRef
from lazybuild.oci.platform import Platform

PLATFORM = Platform("linux", "amd64")
DOCKERFILE = """\
FROM alpine AS tools
RUN echo tools
FROM base
COPY --from=tools /t /t
COPY --from=docs /d /d
RUN --mount=from=docs,target=/mnt true
"""


def _plan(named: dict[str, str]):  # type: ignore[no-untyped-def]
    return plan_build(
        DOCKERFILE,
        target_platform=PLATFORM,
        build_platform=PLATFORM,
        image_env=lambda ref, platform: [],
        named_contexts=named,
    )


def test_named_contexts_replace_images_and_stages() -> None:
    plan = _plan(
        {
            "base": "docker-image://registry.test/base:1",
            "tools": "local:context:tools",
            "docs": "local:context:docs",
        }
    )
    # The replaced stage is no longer built: only the final one remains.
    (final,) = plan.stages
    assert final.base == BaseRef("image", "registry.test/base:1")
    copy_tools, copy_docs, run = final.steps
    assert copy_tools.copy_from == BaseRef("context", "context:tools")
    assert copy_docs.copy_from == BaseRef("context", "context:docs")
    assert run.mount_from == (BaseRef("context", "context:docs"),)


def test_without_named_contexts_names_are_stages_and_images() -> None:
    plan = _plan({})
    _tools, final = plan.stages
    assert final.base == BaseRef("image", "base")
    assert final.steps[0].copy_from is not None and final.steps[0].copy_from.kind == "stage"
    assert final.steps[1].copy_from == BaseRef("image", "docs")
