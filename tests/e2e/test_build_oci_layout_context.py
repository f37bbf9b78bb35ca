"""``--build-context NAME=oci-layout://DIR[:TAG][@sha256:...]`` as buildx takes it: an
OCI layout directory's image as ``FROM NAME`` and ``COPY --from=NAME``, its layers
mounted lazily from the layout's blobs, manifest and config checked by digest. The
layouts are written by lazybuild itself (``convert ... oci:DIR``, ``-o type=oci``), or,
for layers that are not eStargz (read whole, verified, unpacked and kept by digest),
assembled from a debootstrap root filesystem with plain gzip layers, some recompressed
with zstd or left uncompressed."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from lazybuild.cli.main import main
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.imagebuild import cached_rootfs_image, copy_layout

DOCKERFILE = """\
FROM base AS built
RUN python3 -c "print('ran on the layout image')" > /ran.txt

FROM scratch
COPY --from=base /etc/debian_version /debian_version
COPY --from=built /ran.txt /ran.txt
"""


@pytest.fixture(scope="module")
def esgz_layout(python_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python image converted by lazybuild into a layout, tagged ``py``."""
    layout = tmp_path_factory.mktemp("layout") / "python-esgz"
    source = cached_rootfs_image(python_rootfs)
    assert main(["-q", "convert", f"oci:{source}", f"oci:{layout}:py"]) == 0
    return layout


@pytest.fixture(scope="module")
def mixed_layout(python_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python image's plain layout (three gzip layers, not eStargz), its second layer
    recompressed with zstd and its third left uncompressed, tagged ``mixed``: the
    layers other tools write (buildx's ``-o type=oci``, ``buildah push oci:``)."""
    layout = copy_layout(
        cached_rootfs_image(python_rootfs), tmp_path_factory.mktemp("layout") / "mixed"
    )
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    manifest = json.loads(_blob(layout, entry["digest"]).read_bytes())
    first, second, third = manifest["layers"]
    tar = gzip.decompress(_blob(layout, second["digest"]).read_bytes())
    manifest["layers"][1] = _add_blob(layout, zstandard.ZstdCompressor().compress(tar), "tar+zstd")
    tar = gzip.decompress(_blob(layout, third["digest"]).read_bytes())
    manifest["layers"][2] = _add_blob(layout, tar, "tar")
    assert first["mediaType"].endswith("tar+gzip")
    written = _add_blob(layout, json.dumps(manifest).encode(), "")
    entry.update(
        digest=written["digest"],
        size=written["size"],
        annotations={"org.opencontainers.image.ref.name": "mixed"},
    )
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _add_blob(layout: Path, data: bytes, kind: str) -> dict[str, object]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    _blob(layout, digest).write_bytes(data)
    media_type = f"application/vnd.oci.image.layer.v1.{kind}"
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _layer_digests(layout: Path, tag: str) -> list[str]:
    manifest = json.loads(_blob(layout, _manifest_digest(layout, tag)).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]


def _manifest_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return str(entry["digest"])


def test_from_and_copy_from_an_oci_layout_context(esgz_layout: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    digest = _manifest_digest(esgz_layout, "py")
    for value in (f"oci-layout://{esgz_layout}:py", f"oci-layout://{esgz_layout}@{digest}"):
        _build_on(state, value, context, tmp_path / "out")
    assert_nothing_left(state)


def test_a_layout_written_by_a_build_is_a_base_for_the_next(
    esgz_layout: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = write_context(tmp_path / "first", "FROM base\nRUN echo first > /first.txt\n")
    built = tmp_path / "built"
    lazybuild(
        state,
        "build",
        "--build-context",
        f"base=oci-layout://{esgz_layout}:py",
        "-t",
        "example.invalid/first:1",
        "-o",
        f"type=oci,dest={built},tar=false",
        str(first),
    )
    second = write_context(tmp_path / "second", "FROM first\nRUN cat /first.txt > /second.txt\n")
    out = tmp_path / "out"
    lazybuild(
        state,
        "build",
        "--build-context",
        f"first=oci-layout://{built}",
        "-o",
        f"type=local,dest={out}",
        str(second),
    )
    assert (out / "second.txt").read_text() == "first\n"
    assert_nothing_left(state)


def test_what_cannot_be_a_base_is_one_line(esgz_layout: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", "FROM base\nRUN true\n")
    tampered = tmp_path / "tampered"
    shutil.copytree(esgz_layout, tampered)
    manifest = json.loads(
        (tampered / "blobs" / "sha256" / _manifest_digest(tampered, "py").split(":")[1]).read_text()
    )
    config = tampered / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    config.write_bytes(config.read_bytes().replace(b'"Env"', b'"Enx"'))
    cases = {
        f"oci-layout://{esgz_layout}:nope": "no image tagged 'nope'",
        f"oci-layout://{tampered}:py": f"{tampered}: blob sha256:",
        f"oci-layout://{tmp_path}": "is not an OCI layout directory",
    }
    for value, message in cases.items():
        result = lazybuild(
            state, "build", "--build-context", f"base={value}", str(context), check=False
        )
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if message in line]
        if not lines:
            pytest.fail(f"{value}: {result.stderr}")
    assert_nothing_left(state)


def test_layers_that_are_not_estargz_are_read_whole_verified_and_kept(
    python_rootfs: Path, mixed_layout: Path, tmp_path: Path
) -> None:
    """gzip, zstd and uncompressed layers (what buildx's ``-o type=oci`` writes), as
    FROM and COPY --from: each read whole from the layout, hashed as it is read,
    unpacked and kept by digest as a registry's non-eStargz layers are."""
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    plain = cached_rootfs_image(python_rootfs)  # three gzip layers, tagged latest
    for value, layers in (
        (f"oci-layout://{plain}", _layer_digests(plain, "latest")),
        (f"oci-layout://{mixed_layout}:mixed", _layer_digests(mixed_layout, "mixed")),
    ):
        result = _build_on(state, value, context, tmp_path / "out")
        assert "is not eStargz: read whole and unpacked" in result.stderr, result.stderr
        for digest in layers:
            assert (state / "unpacked" / digest.split(":")[1]).is_dir(), digest
    # Kept by digest: a layer unpacked once is not read again (here its file has been
    # overwritten since, which a second read would refuse).
    copy = tmp_path / "copy"
    shutil.copytree(mixed_layout, copy)
    for digest in _layer_digests(copy, "mixed"):
        blob = _blob(copy, digest)
        blob.write_bytes(bytes(blob.stat().st_size))
    _build_on(state, f"oci-layout://{copy}:mixed", context, tmp_path / "out-again", "--no-cache")
    assert_nothing_left(state)


def test_a_build_on_plain_layers_exports_a_layout_the_next_build_takes(
    python_rootfs: Path, tmp_path: Path
) -> None:
    """``-o type=oci`` over a plain layout's image keeps its gzip layers as they are
    (so the next build's layout mixes them with eStargz), and ``--optimize-base``
    reads them from the layout, verified, and writes them as eStargz."""
    state = tmp_path / "state"
    plain = cached_rootfs_image(python_rootfs)
    first = write_context(tmp_path / "first", "FROM base\nRUN echo first > /first.txt\n")
    built, optimized = tmp_path / "built", tmp_path / "optimized"
    for dest, flags in ((built, ()), (optimized, ("--optimize-base",))):
        lazybuild(
            state,
            "build",
            *flags,
            "--build-context",
            f"base=oci-layout://{plain}",
            "-t",
            "example.invalid/first:1",
            "-o",
            f"type=oci,dest={dest},tar=false",
            str(first),
        )
    kinds = [
        "estargz" in json.dumps(layer)
        for layer in json.loads(_blob(built, _manifest_digest(built, "1")).read_bytes())["layers"]
    ]
    assert kinds == [False, False, False, True]
    layers = json.loads(_blob(optimized, _manifest_digest(optimized, "1")).read_bytes())
    assert all("estargz" in json.dumps(layer) for layer in layers["layers"])
    second = write_context(tmp_path / "second", "FROM first\nRUN cat /first.txt > /second.txt\n")
    for layout in (built, optimized):
        out = tmp_path / f"out-{layout.name}"
        lazybuild(
            state,
            "build",
            "--build-context",
            f"first=oci-layout://{layout}",
            "-o",
            f"type=local,dest={out}",
            str(second),
        )
        assert (out / "second.txt").read_text() == "first\n"
    assert_nothing_left(state)


def test_cached_steps_read_the_layout_given_now(mixed_layout: Path, tmp_path: Path) -> None:
    """A step's key is the manifest's digest, not the directory: after the layout a
    build used is moved away, the next build's hits open the layers from the layout it
    was given (a cache record names the directory of the build that made it)."""
    state = tmp_path / "state"
    # The output holds the base image's files, so its layers are opened again.
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo ran > /ran.txt\n")
    first, moved = tmp_path / "first", tmp_path / "moved"
    shutil.copytree(mixed_layout, first)
    lazybuild(state, "build", "--build-context", f"base=oci-layout://{first}:mixed", str(context))
    first.rename(moved)
    shutil.rmtree(state / "unpacked")  # so the layers are read from a layout again
    out = tmp_path / "out"
    result = lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-context",
        f"base=oci-layout://{moved}:mixed",
        "-o",
        f"type=local,dest={out}",
        str(context),
    )
    assert "CACHED" in result.stderr, result.stderr
    assert (out / "ran.txt").read_text() == "ran\n"
    assert (out / "etc" / "debian_version").read_text().startswith("12")
    assert_nothing_left(state)


def test_a_tampered_layer_is_refused_in_one_line_and_nothing_is_kept(
    mixed_layout: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", "FROM base\nRUN true\n")
    tampered = tmp_path / "tampered"
    shutil.copytree(mixed_layout, tampered)  # copies: the fixture's blobs stay as they are
    digest = _layer_digests(tampered, "mixed")[1]
    blob = _blob(tampered, digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(data)
    result = lazybuild(
        state,
        "build",
        "--build-context",
        f"base=oci-layout://{tampered}:mixed",
        str(context),
        check=False,
    )
    assert result.returncode == 1, result.stderr
    message = f"{tampered}: blob {digest} is corrupt (hashes to sha256:"
    assert [line for line in result.stderr.splitlines() if message in line], result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(state)
    unpacked = state / "unpacked"
    assert not (unpacked / digest.split(":")[1]).exists()
    assert [p.name for p in unpacked.iterdir() if p.name.startswith(".")] == []


def test_through_the_daemon_the_layout_travels_as_its_blobs(
    esgz_layout: Path, tmp_path: Path
) -> None:
    """The daemon never opens the client's directory: the client sends the blobs the
    image needs after the context, the daemon unpacks and keeps them as a local
    cache's, and builds from its own copy."""
    from tests.integration.test_daemon_build import Daemons

    daemons = Daemons(tmp_path)
    try:
        daemons.start()
        context = write_context(tmp_path / "ctx", DOCKERFILE)
        _build_cold_then_warm(daemons.address, esgz_layout, "py", context, tmp_path)
    finally:
        daemons.stop_all()


def test_through_the_daemon_layers_that_are_not_estargz_are_unpacked(
    mixed_layout: Path, tmp_path: Path
) -> None:
    """The layout's gzip, zstd and uncompressed blobs travel to the daemon as its
    eStargz ones do; its filesystem process reads them whole, verified, and keeps them
    unpacked; a tampered blob is refused in one line (before the layer is kept: once
    it is, its digest is all a build needs)."""
    from tests.integration.test_daemon_build import Daemons

    daemons = Daemons(tmp_path)
    try:
        daemons.start()
        context = write_context(tmp_path / "ctx", DOCKERFILE)
        # First, while the daemon has unpacked none of its layers.
        tampered = tmp_path / "tampered"
        shutil.copytree(mixed_layout, tampered)
        digest = _layer_digests(tampered, "mixed")[2]
        blob = _blob(tampered, digest)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(data)
        result = lazybuild(
            tmp_path / "client-state",
            "build",
            "--builder",
            daemons.address,
            "--no-cache",
            "--build-context",
            f"base=oci-layout://{tampered}:mixed",
            "-o",
            f"type=local,dest={tmp_path / 'out-tampered'}",
            str(context),
            check=False,
        )
        assert result.returncode == 1, result.stderr
        message = f"blob {digest} is corrupt (hashes to sha256:"
        assert [line for line in result.stderr.splitlines() if message in line], result.stderr
        assert "Traceback" not in result.stderr
        _build_cold_then_warm(daemons.address, mixed_layout, "mixed", context, tmp_path)
    finally:
        daemons.stop_all()


def _build_cold_then_warm(
    address: str, layout: Path, tag: str, context: Path, tmp_path: Path
) -> None:
    """Two builds through the daemon on the layout's image: the second is a cache hit,
    and neither names the client's directory (the daemon builds from its own copy)."""
    for attempt in ("cold", "warm"):
        result = _build_on(
            tmp_path / "client-state",
            f"oci-layout://{layout}:{tag}",
            context,
            tmp_path / f"out-{attempt}",
            "--builder",
            address,
        )
        if attempt == "warm":
            assert "CACHED" in result.stderr, result.stderr
        assert str(layout) not in result.stderr


def _build_on(
    state: Path, base: str, context: Path, out: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """``DOCKERFILE`` built on the named context ``base`` into ``out``, checked: its RUN
    step ran on the layout's Debian image."""
    shutil.rmtree(out, ignore_errors=True)
    result = lazybuild(
        state,
        "build",
        "--progress=plain",
        *flags,
        "--build-context",
        f"base={base}",
        "-o",
        f"type=local,dest={out}",
        str(context),
    )
    assert (out / "ran.txt").read_text() == "ran on the layout image\n"
    assert (out / "debian_version").read_text().startswith("12")
    return result
