"""Write a varied tar as eStargz, open it again, and check every byte and attribute."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from lazybuild.estargz import LayerFormat, decode_toc_json, decompressed_stream, detect_format
from lazybuild.estargz.gzipmembers import inflate_members
from tests.unit.estargz.esgz_helpers import (
    SMALL_CHUNK,
    Member,
    input_files,
    make_tar,
    open_blob,
    read_file,
    rich_members,
    write,
)


@pytest.fixture(scope="module")
def members() -> list[Member]:
    return rich_members()


@pytest.fixture(scope="module")
def written(members: list[Member]):  # type: ignore[no-untyped-def]
    return write(make_tar(members))


def test_every_file_reads_back_through_verified_chunks(members, written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    layer = open_blob(blob, result.toc_digest)
    for path, content in input_files(members).items():
        assert read_file(layer, blob, path) == content, path


def test_blob_digest_size_and_diff_id(written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    assert result.size == len(blob)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    uncompressed = b"".join(inflate_members([blob]))
    assert result.uncompressed_size == len(uncompressed)
    assert result.diff_id == "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    assert detect_format("application/vnd.oci.image.layer.v1.tar+gzip", blob[:4], blob[-51:]) is (
        LayerFormat.ESTARGZ
    )


def test_whole_blob_is_a_plain_tar_ending_with_the_toc(members, written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    with tarfile.open(fileobj=decompressed_stream(io.BytesIO(blob)), mode="r|") as archive:
        names = []
        for info in archive:
            names.append(info.name)
            if info.name == "stargz.index.json":
                data = archive.extractfile(info)
                assert data is not None
                json_bytes = data.read()
                assert "sha256:" + hashlib.sha256(json_bytes).hexdigest() == result.toc_digest
    assert names[0] == ".no.prefetch.landmark"
    assert names[-1] == "stargz.index.json"
    assert len(names) == len(members) + 2


def test_metadata_survives(written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    index = open_blob(blob, result.toc_digest).index
    multi = index.lookup("/bin/multi")
    link = index.lookup("./bin/link-to-multi")
    assert multi is not None and multi is link
    assert multi.nlink == 2 and multi.mode == 0o4755
    sym = index.lookup("bin/sym")
    assert sym is not None and sym.type == "symlink" and sym.link_name == "multi"
    null = index.lookup("dev/null")
    assert null is not None and (null.type, null.dev_major, null.dev_minor) == ("char", 1, 3)
    sda = index.lookup("dev/sda")
    assert sda is not None and (sda.type, sda.dev_major, sda.dev_minor) == ("block", 8, 0)
    fifo = index.lookup("dev/fifo")
    assert fifo is not None and fifo.type == "fifo"
    xattr_file = index.lookup("home/user/xattr-file")
    assert xattr_file is not None
    assert xattr_file.xattrs == {
        "user.mime": b"text/plain",
        "security.capability": b"\x01\x00\xff",
    }
    assert (xattr_file.uid, xattr_file.gid) == (1000, 1000)
    assert (xattr_file.user_name, xattr_file.group_name) == ("user", "users")
    second = index.lookup("home/user/second")
    assert second is not None and second.user_name == "user"  # filled forward
    assert index.lookup("epoch-file").mtime is None  # type: ignore[union-attr]
    assert index.lookup("half-second").mtime == 1_700_000_000  # type: ignore[union-attr]
    assert index.lookup("etc/small.conf").mtime == 1_700_000_000  # type: ignore[union-attr]
    home = index.lookup("home")
    assert home is not None and home.implicit and home.mode == 0o755
    assert index.root.nlink == 2 + 5  # bin, deep, dev, etc, home
    assert index.lookup("unicode-ñame") is not None


def test_chunking_matches_the_reference_writer(written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    layer = open_blob(blob, result.toc_digest)
    entries = decode_toc_json(layer.toc_json).entries
    by_name: dict[str, list] = {}  # type: ignore[type-arg]
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    exact = by_name["bin/exact"]
    assert [(e.type, e.chunk_offset, e.chunk_size) for e in exact] == [
        ("reg", 0, SMALL_CHUNK),
        ("chunk", SMALL_CHUNK, SMALL_CHUNK),  # exact multiple: last chunkSize is set too
    ]
    multi = by_name["bin/multi"]
    assert [(e.type, e.chunk_offset, e.chunk_size) for e in multi] == [
        ("reg", 0, SMALL_CHUNK),
        ("chunk", SMALL_CHUNK, SMALL_CHUNK),
        ("chunk", 2 * SMALL_CHUNK, SMALL_CHUNK),
        ("chunk", 3 * SMALL_CHUNK, 0),
    ]
    assert [e.type for e in by_name["etc/empty"]] == ["reg"]
    empty = by_name["etc/empty"][0]
    assert empty.offset == 0 and empty.chunk_digest == ""
    assert empty.digest == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert all(e.inner_offset == 0 for e in entries)  # v0.12 readers do not know innerOffset
    assert by_name["etc/"][0].user_name == "root"
    offsets = [e.offset for e in entries if e.offset]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def test_chunk_for_offset(written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    index = open_blob(blob, result.toc_digest).index
    node = index.lookup("bin/multi")
    assert node is not None and len(node.chunks) == 4
    assert index.chunk_for_offset(node, 0).chunk_offset == 0
    assert index.chunk_for_offset(node, SMALL_CHUNK - 1).chunk_offset == 0
    assert index.chunk_for_offset(node, SMALL_CHUNK).chunk_offset == SMALL_CHUNK
    last = index.chunk_for_offset(node, node.size - 1)
    assert (last.chunk_offset, last.size) == (3 * SMALL_CHUNK, 1234)
    assert last.end <= open_blob(blob).toc_offset
    with pytest.raises(ValueError):
        index.chunk_for_offset(node, node.size)


def test_stats(written) -> None:  # type: ignore[no-untyped-def]
    blob, result = written
    stats = open_blob(blob, result.toc_digest).index.stats
    assert stats == result.stats
    assert stats.landmark == "no-prefetch" and stats.prioritized_files == 0
    assert stats.files == 11  # the landmark is not counted
    assert stats.chunks == 2 + 1 + 4 + 7  # exact, one-chunk, multi, seven small non-empty files


def test_ustar_and_gnu_input_formats() -> None:
    members = [Member("a/b", data=b"payload"), Member("a/" + "x" * 150, data=b"long")]
    for tar_format in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        if tar_format == tarfile.USTAR_FORMAT:
            members = members[:1]
        blob, result = write(make_tar(members, tar_format))
        layer = open_blob(blob, result.toc_digest)
        for path, content in input_files(members).items():
            assert read_file(layer, blob, path) == content
