"""``lazybuild build`` profiles the image's own workload and orders its new layers by it."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from lazybuild.estargz.layerformat import decompressed_stream
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from lazybuild.oci import mediatypes
from lazybuild.profile.record import read_record
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.gochecker import build_go_checker, go_available, run_go_checker
from tests.support.images import read_layout_image
from tests.support.registry import Registry, resolve_pushed

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
    names: list[str] = []
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


def _files_before_landmark(blob: Path) -> list[str] | None:
    """The non-directory entries before ``.prefetch.landmark`` (parent directories move
    along with their files); None for a layer marked ``.no.prefetch.landmark``."""
    names: list[str] = []
    with blob.open("rb") as raw, tarfile.open(fileobj=decompressed_stream(raw), mode="r|") as tar:
        for member in tar:
            if member.name == PREFETCH_LANDMARK:
                return names
            if member.name in (NO_PREFETCH_LANDMARK, TOC_TAR_NAME):
                return None
            if not member.isdir():
                names.append(member.name)
    raise AssertionError(f"{blob} has no landmark")


def test_optimize_base_puts_the_recorded_files_first_in_every_layer(
    base_image: str, registry: Registry, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    context = write_context(tmp_path / "ctx", APP, FILES)
    out = tmp_path / "oci"
    record_path = tmp_path / "record.json"
    stderr = _build(base_image, context, out, "--optimize-base", "--record-out", str(record_path))
    assert "in the 1 new layer(s)" in stderr and "base layer(s)" in stderr
    assert "downloading base layer" in stderr
    image = read_layout_image(out)
    record = read_record(record_path)
    base_digests = [
        layer["digest"] for layer in read_layout_image(_pulled(base_image, tmp_path)).layers
    ]
    assert len(image.layers) == len(base_digests) + 1
    # Start-up reads the shell and its libraries from the base image, the app's files
    # from the new layer; each layer lists exactly its share of the record, in order.
    assert {entry.layer_index for entry in record} >= {0, len(base_digests)}
    for index, layer in enumerate(image.layers):
        wanted = [entry.path for entry in record if entry.layer_index == index]
        assert _files_before_landmark(image.blob(layer["digest"])) == (wanted or None), index
    # Base layers the workload read from were rewritten (new digests); one it read
    # nothing from comes out as the same bytes (the base is eStargz from the same
    # deterministic writer), so it stays shared. diff_ids follow the tars.
    for index, (layer, original) in enumerate(zip(image.layers, base_digests, strict=False)):
        if any(entry.layer_index == index for entry in record):
            assert layer["digest"] != original
        else:
            assert layer["digest"] == original
    for layer, diff_id in zip(image.layers, image.config["rootfs"]["diff_ids"], strict=True):
        with image.blob(layer["digest"]).open("rb") as raw:
            stream = decompressed_stream(raw)
            digest = hashlib.sha256()
            while piece := stream.read(1 << 20):
                digest.update(piece)
        assert f"sha256:{digest.hexdigest()}" == diff_id
    if go_available():
        cache = getattr(request.config, "cache", None)
        where = Path(cache.mkdir("estargz-gochecker")) if cache is not None else tmp_path
        checker = build_go_checker(where)
        for layer in image.layers:
            toc_digest = layer["annotations"][mediatypes.TOC_DIGEST_ANNOTATION]
            assert run_go_checker(checker, image.blob(layer["digest"]), toc_digest)["files"] > 0
    # A rebuild with the same profile takes the rewritten base layers from the cache.
    again = _build(
        base_image,
        context,
        tmp_path / "oci-again",
        "--optimize-base",
        "--record-in",
        str(record_path),
    )
    assert "downloading base layer" not in again
    assert read_layout_image(tmp_path / "oci-again").layers == image.layers
    assert_nothing_left(tmp_path / "state")


def test_optimize_base_and_no_optimize_exclude_each_other(
    base_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = write_context(tmp_path / "ctx", APP, FILES)
    state = tmp_path / "state"
    code = main(
        ["--state-dir", str(state), "build", "--no-optimize", "--optimize-base", str(context)]
    )
    assert code != 0
    assert "--optimize-base and --no-optimize exclude each other" in capsys.readouterr().err


def _pulled(reference: str, tmp_path: Path) -> Path:
    layout = tmp_path / "base-layout"
    assert main(["-q", "convert", reference, f"oci:{layout}"]) == 0
    return layout


def test_a_run_prefetches_the_base_files_the_published_record_lists(
    base_image: str, registry: Registry, tmp_path: Path
) -> None:
    """Base layers stay as they are (shared), yet the record published with the image
    covers them: a cold run fetches the listed files of every layer in a few large
    requests as it starts, where without a record each comes when it is read."""
    context = write_context(tmp_path / "ctx", APP, FILES)
    record_path = tmp_path / "record.json"
    runs = {}
    for name, options in {
        "recorded": ("--record-out", str(record_path)),
        "plain": ("--no-optimize",),
    }.items():
        reference = f"{registry.host}/e2e-optimize/published:{name}"
        lazybuild(
            tmp_path / "state",
            "build",
            "--progress=plain",
            "--build-arg",
            f"BASE={base_image}",
            "-t",
            reference,
            "--push",
            *options,
            str(context),
        )
        report = tmp_path / f"{name}.json"
        run = lazybuild(
            tmp_path / f"run-{name}",
            "run",
            "--network",
            "none",
            "--fetch-report",
            str(report),
            reference,
        )
        assert run.stdout == "c\na\n"
        by_digest = {layer["digest"]: layer for layer in json.loads(report.read_text())["layers"]}
        runs[name] = (run.stderr, [by_digest[digest] for digest in resolve_pushed(reference)[1]])
    record = read_record(record_path)
    top = max(entry.layer_index or 0 for entry in record)
    in_base = {entry.layer_index for entry in record if (entry.layer_index or 0) < top}
    assert in_base, "the shell and its libraries come from the base image"
    stderr, layers = runs["recorded"]
    assert f"prefetching {len(record)} file(s) the image's workload read" in stderr
    assert "prefetching" not in runs["plain"][0]
    for index in in_base:
        assert index is not None
        # The TOC (one or two reads) and one prefetch request; nothing on demand.
        assert layers[index]["requests"] <= 3, (index, layers[index])
    assert sum(layer["requests"] for layer in layers) <= sum(
        layer["requests"] for layer in runs["plain"][1]
    )
    assert_nothing_left(tmp_path / "state")


BIG_BASE = """\
ARG BASE
FROM ${BASE}
RUN mkdir /data && { echo 'first line'; head -c 40000000 /dev/urandom; } > /data/big.bin
"""
READS_THE_FIRST_LINE = """\
ARG BASE
FROM ${BASE}
RUN read -r line < /data/big.bin && test "$line" = 'first line'
CMD ["sh", "-c", "read -r line < /data/big.bin && echo \\"$line\\""]
"""


def test_the_places_read_of_a_big_base_file_go_into_the_record_and_come_first_in_a_run(
    base_image: str, registry: Registry, tmp_path: Path
) -> None:
    """A file over the prefetch limit (40 MB here) is read in one place; the record says
    where, though a build step had read it before (its pages were in the kernel's cache),
    and a cold run fetches that place with the rest of the record as it starts."""
    big_base = f"{registry.host}/e2e-optimize/big-base:latest"
    lazybuild(
        tmp_path / "state",
        "build",
        "--no-optimize",
        "--build-arg",
        f"BASE={base_image}",
        "-t",
        big_base,
        "--push",
        str(write_context(tmp_path / "base-ctx", BIG_BASE)),
    )
    reference = f"{registry.host}/e2e-optimize/big-app:latest"
    record_path = tmp_path / "record.json"
    lazybuild(
        tmp_path / "state",
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={big_base}",
        "-t",
        reference,
        "--push",
        "--record-out",
        str(record_path),
        str(write_context(tmp_path / "ctx", READS_THE_FIRST_LINE)),
    )
    (big,) = [entry for entry in read_record(record_path) if entry.path == "data/big.bin"]
    assert big.read_ranges and big.read_ranges[0][0] == 0
    assert sum(length for _, length in big.read_ranges) < 16 << 20  # a place, not the file
    report_path = tmp_path / "fetch-report.json"
    run = lazybuild(
        tmp_path / "run",
        "run",
        "--network",
        "none",
        "--fetch-report",
        str(report_path),
        reference,
    )
    assert run.stdout == "first line\n"
    # The filesystem process starts on the record itself as soon as the layers open, so
    # how much is still to fetch when the CLI asks is a race (anything from nothing to
    # all of it); what was fetched in the end is not: the first 4 MiB chunk of random
    # bytes (the record's other files are a few hundred KB).
    scheduled = [line for line in run.stderr.splitlines() if "prefetching" in line]
    assert len(scheduled) == 1, scheduled
    report = json.loads(report_path.read_text())
    assert sum(layer["bytes_fetched"] for layer in report["layers"]) >= 4 << 20
    assert_nothing_left(tmp_path / "state")
