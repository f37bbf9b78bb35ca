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
    # As after a base image update: no chunk is cached, and the layers are new here.
    shutil.rmtree(state / "cache")
    shutil.rmtree(state / "tocs")
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


def _modes(report: Path) -> dict[str, tuple[str, int, int]]:
    """By layer digest: (mode, bytes fetched, size) from a fetch report."""
    return {
        layer["digest"]: (layer["mode"], int(layer["bytes_fetched"]), int(layer["size"]))
        for layer in json.loads(report.read_text())["layers"]
    }


def test_a_base_built_on_again_is_fetched_whole_and_then_mounted_from_whole_images(
    base_image: str, tmp_path: Path
) -> None:
    """The first build on a base reads only what its steps read; a build on it again
    fetches its layers whole in the background and keeps their whole images, which the
    builds after it mount without the filesystem process: no request, no FUSE read."""
    state = tmp_path / "state"
    # A step that takes a while, as real ones do: the layers' background fetch runs
    # once readers leave the link alone for a moment.
    context = write_context(tmp_path / "ctx", DOCKERFILE + "RUN sleep 4\n")
    _build(state, base_image, context, tmp_path / "first.json")
    first = _modes(tmp_path / "first.json")
    assert {mode for mode, _, _ in first.values()} == {"lazy"}
    biggest = max(first, key=lambda digest: first[digest][2])
    assert first[biggest][1] < first[biggest][2] // 2, first  # what the step read
    for attempt in range(2, 7):
        report = tmp_path / f"build{attempt}.json"
        _build(state, base_image, context, report)
        modes = _modes(report)
        if {mode for mode, _, _ in modes.values()} == {"local"}:
            break
    else:
        raise AssertionError(f"layers never mounted from whole images: {modes}")
    assert all(fetched == 0 for _, fetched, _ in modes.values()), modes
    assert len(list((state / "erofs").glob("*.image"))) == len(first)
    # The step still reads what it read: the build behaves the same.
    _build(state, base_image, context, tmp_path / "again.json")
    assert_nothing_left(state)
    # A prune forgets the layers were used: the next build is a first use again.
    lazybuild(state, "prune")
    _build(state, base_image, context, tmp_path / "after-prune.json")
    after = _modes(tmp_path / "after-prune.json")
    assert {mode for mode, _, _ in after.values()} == {"lazy"}
    assert after[biggest][1] < after[biggest][2] // 2, after
    assert_nothing_left(state)
