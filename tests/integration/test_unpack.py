"""unpack_layer against the real registry fixture, and the extractor's path safety."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from lazybuild.errors import DigestMismatchError, FormatError, NotFoundError
from lazybuild.estargz import WriterOptions, write_estargz
from lazybuild.lazyfs.unpack import (
    UnpackedLayer,
    extract_layer_stream,
    unpack_blob_file,
    unpack_layer,
)
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support.registry import Registry

AMD64 = Platform("linux", "amd64")


def unpack_image(image: str, dest: Path) -> list[UnpackedLayer]:
    """Unpack every layer in parallel, each one twice at once (the second waits, reuses)."""
    ref = Reference.parse(image)

    async def main() -> list[UnpackedLayer]:
        async with RegistryClient(insecure_registries=[ref.registry]) as client:
            resolved = await client.resolve_image(ref, AMD64)
            results: dict[int, UnpackedLayer] = {}

            async def one(slot: int, layer: Descriptor) -> None:
                results[slot] = await unpack_layer(client, resolved.ref, layer, dest)

            async with trio.open_nursery() as nursery:
                for position, layer in enumerate(resolved.manifest.layers):
                    nursery.start_soon(one, 2 * position, layer)
                    nursery.start_soon(one, 2 * position + 1, layer)
            return [results[slot] for slot in sorted(results)]

    return trio.run(main)


@pytest.mark.root
def test_tiny_image_layers_unpack_to_overlay_lower_dirs(tiny_image: str, tmp_path: Path) -> None:
    results = unpack_image(tiny_image, tmp_path / "layers")
    pairs = list(zip(results[::2], results[1::2], strict=True))
    for first, second in pairs:
        assert first.path == second.path and first.path.is_dir()
        assert sorted([first.reused, second.reused]) == [False, True]
    assert not list((tmp_path / "layers").glob(".partial-*"))
    runtime, tools, upper = (first.path for first, _ in pairs)

    motd = upper / "etc" / "motd"
    info = motd.lstat()
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "opt" / "data", "trusted.overlay.opaque") == b"y"
    assert not list(upper.rglob(".wh.*"))
    assert (upper / "hello.txt").read_bytes() == b"hello from the upper layer\n"
    assert os.access(tools / "usr" / "bin" / "echo", os.X_OK)
    assert (runtime / "usr" / "lib").exists()

    again = unpack_image(tiny_image, tmp_path / "layers")
    assert all(result.reused for result in again)

    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(str(path) for path in (upper, tools, runtime))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", merged], check=True
    )
    try:
        assert not (merged / "etc" / "motd").exists()
        assert sorted(os.listdir(merged / "opt" / "data")) == ["new.txt"]
        assert (merged / "hello.txt").read_bytes() == b"hello from the upper layer\n"
        assert (merged / "usr" / "bin" / "cat").is_file()
        run = subprocess.run(
            ["chroot", merged, "/usr/bin/cat", "/hello.txt"], capture_output=True, check=True
        )
        assert run.stdout == b"hello from the upper layer\n"
    finally:
        subprocess.run(["umount", merged], check=True)


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o644, 1_600_000_000
    return info


@pytest.mark.root
def test_estargz_without_annotation_unpacks_without_artefacts(
    registry: Registry, tmp_path: Path
) -> None:
    tar = _tar([(_info("app/", tarfile.DIRTYPE), b""), (_info("app/data.txt"), b"payload\n")])
    blob = io.BytesIO()
    written = write_estargz(io.BytesIO(tar), blob, WriterOptions(chunk_size=1 << 16))
    descriptor = Descriptor(mediatypes.OCI_LAYER_GZIP, written.digest, written.size)
    ref = Reference.parse(f"{registry.host}/it/unpack-esgz:v1")

    async def main() -> UnpackedLayer:
        async with RegistryClient(insecure_registries=[registry.host]) as client:
            await client.push_blob(ref, descriptor, blob.getvalue())
            return await unpack_layer(client, ref, descriptor, tmp_path)

    result = trio.run(main)
    assert sorted(os.listdir(result.path)) == ["app"]
    assert (result.path / "app" / "data.txt").read_bytes() == b"payload\n"
    assert (result.path / "app" / "data.txt").stat().st_mtime == 1_600_000_000


def test_corrupt_blob_is_refused_and_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    tar = _tar([(_info("a.txt"), os.urandom(3000))])
    descriptor = Descriptor(mediatypes.OCI_LAYER_TAR, "sha256:" + _sha(tar), len(tar))
    ref = Reference.parse(f"{registry.host}/it/unpack-bad:v1")

    async def push() -> None:
        async with RegistryClient(insecure_registries=[registry.host]) as client:
            await client.push_blob(ref, descriptor, tar)

    async def unpack() -> None:
        async with RegistryClient(insecure_registries=[registry.host], max_retries=0) as client:
            await unpack_layer(client, ref, descriptor, tmp_path / "layers")

    trio.run(push)
    hex_digest = descriptor.digest.split(":")[1]
    (stored,) = registry.root.rglob(f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data")
    damaged = bytearray(stored.read_bytes())
    damaged[600] ^= 0xFF  # inside a.txt's payload: the tar still extracts
    stored.write_bytes(bytes(damaged))
    with pytest.raises(DigestMismatchError):
        trio.run(unpack)
    assert os.listdir(tmp_path / "layers") == []


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_layout_blob_file_is_unpacked_verified(compression: str, tmp_path: Path) -> None:
    """An OCI layout's blob (``unpack_blob_file``): hashed as it is read, kept under its
    digest only when it matches; a tampered file (even one that still extracts), one of
    another size or a missing one is refused and leaves nothing."""
    import gzip

    import zstandard

    payload = os.urandom(3000)
    tar = _tar([(_info("app/", tarfile.DIRTYPE), b""), (_info("app/data.txt"), payload)])
    compressors: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "none": bytes,
    }
    blob = compressors[compression](tar)
    descriptor = Descriptor(mediatypes.OCI_LAYER_TAR, "sha256:" + _sha(blob), len(blob))
    dest = tmp_path / "layers"

    def unpack(data: bytes | None) -> UnpackedLayer:
        path = tmp_path / "blob"
        path.unlink(missing_ok=True)
        if data is not None:
            path.write_bytes(data)
        return trio.run(unpack_blob_file, path, descriptor, dest, "the blob")

    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(DigestMismatchError, match=r"^the blob is corrupt \(hashes to sha256:"):
        unpack(bytes(damaged))
    with pytest.raises(FormatError, match="is 1 bytes, its descriptor says"):
        unpack(b"x")
    with pytest.raises(NotFoundError, match="the blob is missing"):
        unpack(None)
    assert os.listdir(dest) == []
    result = unpack(blob)
    assert result.path == dest / _sha(blob) and not result.reused
    assert (result.path / "app" / "data.txt").read_bytes() == payload
    assert os.listdir(dest) == [_sha(blob)]
    assert unpack(None).reused  # kept by digest: the file is not read again


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "entries",
    [
        [(_info("../escape"), b"x")],
        [(_info("a/../../escape"), b"x")],
        [(_info("link", tarfile.SYMTYPE, "/tmp"), b""), (_info("link/escape"), b"x")],
        [(_info("hard", tarfile.LNKTYPE, "../../etc/passwd"), b"")],
    ],
    ids=["dotdot", "nested-dotdot", "through-symlink", "hardlink-outside"],
)
def test_extractor_never_writes_outside(
    entries: list[tuple[tarfile.TarInfo, bytes]], tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(FormatError):
        extract_layer_stream(io.BytesIO(_tar(entries)), dest, "layer test")
    assert not (tmp_path / "escape").exists()
    assert not Path("/tmp/escape").exists()


def test_extractor_keeps_symlinks_hardlinks_and_later_entries_win(tmp_path: Path) -> None:
    entries = [
        (_info("dir/", tarfile.DIRTYPE), b""),
        (_info("dir/file"), b"first"),
        (_info("dir/file"), b"second"),
        (_info("dir/abs-link", tarfile.SYMTYPE, "/etc/passwd"), b""),
        (_info("dir/hard", tarfile.LNKTYPE, "dir/file"), b""),
        (_info("stargz.index.json"), b"{}"),
        (_info(".no.prefetch.landmark"), b"\x0f"),
    ]
    extract_layer_stream(io.BytesIO(_tar(entries)), tmp_path, "layer test")
    assert sorted(os.listdir(tmp_path)) == ["dir"]
    assert (tmp_path / "dir" / "file").read_bytes() == b"second"
    assert os.readlink(tmp_path / "dir" / "abs-link") == "/etc/passwd"
    assert (tmp_path / "dir" / "hard").stat().st_ino == (tmp_path / "dir" / "file").stat().st_ino
