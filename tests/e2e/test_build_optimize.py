"""``lazybuild build`` profiles the image's own workload and orders its new layers by it."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from lazybuild.profile.record import read_record
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.images import read_layout_image
from tests.support.registry import Registry

APP = """\
ARG BASE
FROM ${BASE}
COPY app/ /app/
CMD ["sh", "-c", "cat /app/c.txt /app/a.txt"]
"""
FILES = {f"app/{name}.txt": f"{name}\n" for name in "abcde"}


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/e2e-optimize/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


def _entries_before_landmark(blob: Path) -> list[str] | None:
    names = []
    with tarfile.open(blob, "r:gz") as tar:
        for member in tar:
            if member.name == ".prefetch.landmark":
                return names
            if member.name == ".no.prefetch.landmark":
                return None
            names.append(member.name)
    raise AssertionError(f"{blob} has no landmark")


def _build(base: str, context: Path, out: Path, *extra: str) -> str:
    result = lazybuild(
        out.parent / "state",
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base}",
        "-o",
        f"type=oci,dest={out},tar=false",
        *extra,
        str(context),
    )
    return result.stderr


def test_new_layer_puts_what_the_workload_reads_first(base_image: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", APP, FILES)
    out = tmp_path / "oci"
    record = tmp_path / "record.json"
    stderr = _build(base_image, context, out, "--record-out", str(record))
    assert "exited with status 0" in stderr
    image = read_layout_image(out)
    new_layer = image.blob(image.layers[-1]["digest"])
    first = _entries_before_landmark(new_layer)
    assert first is not None
    files = [name for name in first if name.endswith(".txt")]
    assert files == ["app/c.txt", "app/a.txt"]
    recorded = [entry.path for entry in read_record(record)]
    assert recorded.index("app/c.txt") < recorded.index("app/a.txt")
    # Base layers are left byte for byte: the same digests as the base image's.
    assert all(
        _entries_before_landmark(image.blob(layer["digest"])) is None for layer in image.layers[:-1]
    )
    assert_nothing_left(tmp_path / "state")


@pytest.mark.parametrize(
    ("cmd", "options", "said"),
    [
        ('["sh", "-c", "cat /app/b.txt; exit 3"]', (), "exited with status 3"),
        ('["sleep", "600"]', ("--workload-timeout", "2"), "still running at the timeout"),
    ],
)
def test_a_failing_or_hanging_workload_does_not_fail_the_build(
    base_image: str, tmp_path: Path, cmd: str, options: tuple[str, ...], said: str
) -> None:
    dockerfile = APP.rsplit("CMD", 1)[0] + f"CMD {cmd}\n"
    context = write_context(tmp_path / "ctx", dockerfile, FILES)
    started = time.monotonic()
    stderr = _build(base_image, context, tmp_path / "oci", *options)
    assert time.monotonic() - started < 120
    assert said in stderr
    assert "not fatal" in stderr
    image = read_layout_image(tmp_path / "oci")
    assert len(image.layers) >= 2
    assert_nothing_left(tmp_path / "state")


def test_no_optimize_writes_no_prefetch_landmark(base_image: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", APP, FILES)
    stderr = _build(base_image, context, tmp_path / "oci", "--no-optimize")
    assert "workload profile" not in stderr
    image = read_layout_image(tmp_path / "oci")
    assert _entries_before_landmark(image.blob(image.layers[-1]["digest"])) is None
