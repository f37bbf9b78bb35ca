"""lazybuild's eStargz writer and reader against the Go reference implementation.

Blobs written by lazybuild are opened, TOC-verified and read chunk by chunk by
stargz-snapshotter's ``estargz`` package (v0.12, as packaged by Debian), and blobs
written by the reference ``estargz.Build`` are opened by lazybuild's reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lazybuild.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    WriterOptions,
    decode_toc_json,
    write_estargz,
)
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES, TOCEntry
from tests.support.gochecker import (
    build_go_checker,
    build_reference_blob,
    go_available,
    run_go_checker,
)
from tests.unit.estargz.esgz_helpers import Member, make_tar, open_blob, read_file, rich_members

pytestmark = pytest.mark.skipif(not go_available(), reason="the `go` toolchain is not installed")

MIB = 1 << 20
LANDMARKS = {PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK}


@pytest.fixture(scope="module")
def checker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The pytest cache keeps the binary across runs; without it, build per session.
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return build_go_checker(Path(cache.mkdir("estargz-gochecker")))
    return build_go_checker(tmp_path_factory.mktemp("gochecker"))


def _big_members() -> list[Member]:
    rng = random.Random(42)
    return [
        Member("opt/", tarfile.DIRTYPE, mode=0o755),
        Member("opt/nine-mib", data=rng.randbytes(9 * MIB + 12345)),
        Member("opt/eight-mib", data=rng.randbytes(8 * MIB)),  # exact multiple of 4 MiB
        Member("opt/four-mib", data=rng.randbytes(4 * MIB)),
        Member("opt/text", data=b"compressible line\n" * 200_000),
        Member("opt/hard", tarfile.LNKTYPE, linkname="opt/nine-mib"),
    ]


def _over_prefetch_limit_members() -> list[Member]:
    rng = random.Random(7)
    return [
        Member("opt/", tarfile.DIRTYPE, mode=0o755),
        Member("opt/modules", data=rng.randbytes(PREFETCH_FILE_MAX_BYTES + 300_001)),
        Member("opt/nine-mib", data=rng.randbytes(9 * MIB + 12345)),
        Member("opt/text", data=b"compressible line\n" * 200_000),
    ]


def _expected_hashes(members: list[Member]) -> dict[str, str]:
    by_name = {m.name.rstrip("/").removeprefix("./"): m for m in members}
    expected = {}
    for name, member in by_name.items():
        content = by_name[member.linkname] if member.type == tarfile.LNKTYPE else member
        if content.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            expected[name] = hashlib.sha256(content.data).hexdigest()
    return expected


SCENARIOS: dict[str, tuple[Callable[[], list[Member]], dict[str, Any]]] = {
    "rich-small-chunks": (rich_members, {"chunk_size": 64 << 10}),
    "rich-prioritized": (
        rich_members,
        {"chunk_size": 64 << 10, "prioritized_files": ["bin/link-to-multi", "etc/small.conf"]},
    ),
    "big-default-chunks": (_big_members, {"workers": 2}),
    "big-prioritized-one-worker": (
        _big_members,
        {"workers": 1, "prioritized_files": ["opt/hard", "opt/text"], "compression_level": 1},
    ),
    # As written for a workload: a file over the prefetch limit in finer chunks than the rest.
    "over-prefetch-limit-finer-chunks": (
        _over_prefetch_limit_members,
        {"big_file_chunk_size": 512 << 10, "prioritized_files": ["opt/text"]},
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lazybuild_blob_passes_reference_checker(
    scenario: str, checker: Path, tmp_path: Path
) -> None:
    make_members, options = SCENARIOS[scenario]
    members = make_members()
    blob_path = tmp_path / "layer.esgz"
    with blob_path.open("wb") as out:
        written = write_estargz(io.BytesIO(make_tar(members)), out, WriterOptions(**options))
    report = run_go_checker(checker, blob_path, written.toc_digest)
    assert report["toc_digest"] == written.toc_digest
    hashes = {k: v for k, v in report["file_sha256"].items() if k not in LANDMARKS}
    assert hashes == _expected_hashes(members)
    landmark = PREFETCH_LANDMARK if "prioritized_files" in options else NO_PREFETCH_LANDMARK
    assert landmark in report["file_sha256"]
    # Every name is read in full, so a hardlinked file's chunks count once per name.
    index = open_blob(blob_path.read_bytes(), written.toc_digest).index
    assert report["chunks"] == sum(len(node.chunks) for _, node in index.paths())


def test_reference_sees_lazybuild_metadata(checker: Path, tmp_path: Path) -> None:
    blob_path = tmp_path / "layer.esgz"
    with blob_path.open("wb") as out:
        written = write_estargz(io.BytesIO(make_tar(rich_members())), out, WriterOptions())
    meta = run_go_checker(checker, blob_path, written.toc_digest)["meta"]
    xattr_file = meta["home/user/xattr-file"]
    assert (xattr_file["uid"], xattr_file["userName"], xattr_file["groupName"]) == (
        1000,
        "user",
        "users",
    )
    assert xattr_file["xattrs"] == {"user.mime": "dGV4dC9wbGFpbg==", "security.capability": "AQD/"}
    assert (
        meta["dev/null"]["type"],
        meta["dev/null"]["devMajor"],
        meta["dev/null"]["devMinor"],
    ) == (
        "char",
        1,
        3,
    )
    assert meta["bin/sym"]["linkName"] == "multi"
    assert meta["bin/multi"]["mode"] == 0o4755 and meta["bin/multi"]["nlink"] == 2
    assert meta["half-second"]["modtime"] == 1_700_000_000  # truncated, as stat shows it
    assert meta["epoch-file"]["modtime"] == 0


@pytest.mark.parametrize("prioritized", [[], ["bin/link-to-multi", "etc/small.conf"]])
def test_reference_blob_opens_in_lazybuild(
    prioritized: list[str], checker: Path, tmp_path: Path
) -> None:
    members = rich_members()
    tar = make_tar(members)
    tar_path = tmp_path / "in.tar"
    tar_path.write_bytes(tar)
    reference = build_reference_blob(checker, tar_path, tmp_path / "ref.esgz", prioritized)
    blob = (tmp_path / "ref.esgz").read_bytes()
    layer = open_blob(blob, reference["toc_digest"])
    for path, digest in _expected_hashes(members).items():
        assert hashlib.sha256(read_file(layer, blob, path)).hexdigest() == digest
    # Same entries as the reference, apart from compressed offsets, the per-slice
    # user/group name bookkeeping of its parallel builder, and sub-second mtimes: the
    # reference rounds them, lazybuild truncates them as stat shows Docker's unpacked file.
    _, ours = write_estargz_bytes(tar, prioritized)
    strip: dict[str, Any] = {"offset": 0, "user_name": "", "group_name": ""}
    theirs = [dataclasses.replace(e, **strip) for e in decode_toc_json(layer.toc_json).entries]
    mine = [dataclasses.replace(e, **strip) for e in decode_toc_json(ours).entries]
    rounded = {e.name: e.modtime for e in theirs if e.name == "half-second"}
    assert rounded == {"half-second": "2023-11-14T22:13:21Z"}  # the reference rounds up
    truncated = {e.name: e.modtime for e in mine if e.name == "half-second"}
    assert truncated == {"half-second": "2023-11-14T22:13:20Z"}
    assert [_same_second(e) for e in mine] == [_same_second(e) for e in theirs]


def _same_second(entry: TOCEntry) -> TOCEntry:
    """The entry with the one mtime written differently (see above) made equal."""
    if entry.name == "half-second":
        return dataclasses.replace(entry, modtime="")
    return entry


def write_estargz_bytes(tar: bytes, prioritized: list[str]) -> tuple[bytes, bytes]:
    out = io.BytesIO()
    options = WriterOptions(chunk_size=4 * MIB, prioritized_files=prioritized or None)
    write_estargz(io.BytesIO(tar), out, options)
    blob = out.getvalue()
    return blob, open_blob(blob).toc_json
