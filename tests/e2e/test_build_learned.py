"""Learned prefetch: a RUN step's second run on the same base image, with an empty chunk
cache, gets what it read last time in a few large requests instead of one per file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.registry import Registry

# Shared libraries read newest name first: the reverse of their order in the layer, so
# read-ahead across neighbouring files cannot guess them and each is a request of its own.
DOCKERFILE = """\
ARG BASE
FROM ${BASE}
RUN for f in $(ls /usr/lib/x86_64-linux-gnu/*.so* | sort -r); do cat "$f" >/dev/null; done
"""


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/e2e-learned/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


def _build(state: Path, base: str, context: Path, report: Path) -> tuple[str, dict[str, int]]:
    result = lazybuild(
        state, "build", "--progress=plain", "--no-cache", "--build-arg", f"BASE={base}",
        "--fetch-report", str(report), str(context),
    )  # fmt: skip
    layers = json.loads(report.read_text())["layers"]
    return result.stderr, {layer["digest"]: int(layer["requests"]) for layer in layers}


def test_a_step_run_again_prefetches_what_it_read_last_time(
    base_image: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    first, first_requests = _build(state, base_image, context, tmp_path / "first.json")
    assert "read last time" not in first
    assert list((state / "build" / "learned").glob("*.json"))
    # As after a base image update or a cache prune: no chunk is cached any more.
    shutil.rmtree(state / "cache")
    second, second_requests = _build(state, base_image, context, tmp_path / "second.json")
    assert "files read last time" in second
    busiest = max(first_requests, key=lambda digest: first_requests[digest])
    assert first_requests[busiest] >= 10, first_requests
    # The learned files come in 2 MiB batches; the TOC is its own request.
    assert second_requests[busiest] <= first_requests[busiest] // 3, (
        first_requests,
        second_requests,
    )
    assert_nothing_left(state)
