"""Determinism, prioritized files, landmarks, duplicates and re-conversion."""

from __future__ import annotations

import io
import tarfile

import pytest

from lazybuild.errors import FormatError, UsageError
from lazybuild.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    WriterOptions,
    decode_toc_json,
    decompressed_stream,
    write_estargz,
)
from tests.unit.estargz.esgz_helpers import (
    SMALL_CHUNK,
    Member,
    input_files,
    make_tar,
    open_blob,
    pseudo_random,
    read_file,
    rich_members,
    write,
)


class _NonSeekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(target))
        target[: len(chunk)] = chunk
        return len(chunk)


def test_output_does_not_depend_on_workers_or_seekability() -> None:
    tar = make_tar([*rich_members(), Member("big", data=pseudo_random(5 * SMALL_CHUNK + 7, 9))])
    blob1, result1 = write(tar, workers=1)
    blob4, result4 = write(tar, workers=4)
    assert blob1 == blob4 and result1 == result4
    out = io.BytesIO()
    options = WriterOptions(chunk_size=SMALL_CHUNK, workers=3)
    streamed = write_estargz(_NonSeekable(tar), out, options)  # type: ignore[arg-type]
    assert out.getvalue() == blob1 and streamed == result1


def _toc_names(blob: bytes) -> list[str]:
    toc = decode_toc_json(open_blob(blob).toc_json)
    return [e.name for e in toc.entries if e.type != "chunk"]


def test_no_prefetch_landmark_comes_first() -> None:
    blob, result = write(make_tar(rich_members()))
    layer = open_blob(blob, result.toc_digest)
    assert _toc_names(blob)[0] == NO_PREFETCH_LANDMARK
    assert layer.index.no_prefetch and layer.index.prefetch_landmark_offset is None
    assert read_file(layer, blob, NO_PREFETCH_LANDMARK) == b"\x0f"


def test_prioritized_files_with_parents_and_hardlink_targets() -> None:
    members = rich_members()
    blob, result = write(
        make_tar(members), prioritized_files=["/bin/link-to-multi", "../etc/small.conf"]
    )
    names = _toc_names(blob)
    landmark_at = names.index(PREFETCH_LANDMARK)
    assert names[:landmark_at] == [
        "./",
        "bin/",
        "bin/multi",
        "bin/link-to-multi",
        "etc/",
        "etc/small.conf",
    ]
    rest = [m.name for m in members if m.name not in names[:landmark_at]]
    assert names[landmark_at + 1 :] == rest
    layer = open_blob(blob, result.toc_digest)
    landmark_offset = layer.index.prefetch_landmark_offset
    assert landmark_offset is not None and not layer.index.no_prefetch
    stats = layer.index.stats
    assert (
        stats.landmark == "prefetch"
        and stats.prioritized_files == 2 == result.stats.prioritized_files
    )
    for path in ("bin/multi", "etc/small.conf"):
        node = layer.index.lookup(path)
        assert node is not None and all(c.end <= landmark_offset for c in node.chunks)
    for path in ("bin/exact", "home/user/xattr-file"):
        node = layer.index.lookup(path)
        assert node is not None and all(c.offset > landmark_offset for c in node.chunks)
    for path, content in input_files(members).items():
        assert read_file(layer, blob, path) == content


def test_missing_prioritized_file() -> None:
    tar = make_tar([Member("a", data=b"x")])
    with pytest.raises(UsageError, match="nope"):
        write(tar, prioritized_files=["nope"])
    blob, result = write(tar, prioritized_files=["nope", "a"], allow_missing_prioritized=True)
    assert result.missing_prioritized == ("nope",)
    assert _toc_names(blob) == ["a", PREFETCH_LANDMARK]


def test_later_duplicates_replace_earlier_entries_at_their_own_position() -> None:
    tar = make_tar(
        [
            Member("dup", data=b"old"),
            Member("other", data=b"o"),
            Member("./dup", data=b"new"),
        ]
    )
    blob, result = write(tar)
    assert _toc_names(blob) == [NO_PREFETCH_LANDMARK, "other", "./dup"]
    assert read_file(open_blob(blob, result.toc_digest), blob, "dup") == b"new"


def test_reconverting_an_estargz_layer_drops_old_toc_and_landmarks() -> None:
    members = rich_members()
    first, _ = write(make_tar(members), prioritized_files=["etc/small.conf"])
    tar_again = decompressed_stream(io.BytesIO(first)).read()
    second, result = write(tar_again)
    names = _toc_names(second)
    assert names.count(NO_PREFETCH_LANDMARK) == 1 and PREFETCH_LANDMARK not in names
    assert "stargz.index.json" not in names
    layer = open_blob(second, result.toc_digest)
    for path, content in input_files(members).items():
        assert read_file(layer, second, path) == content


def test_unsupported_entries_are_refused() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("vol")
        info.type = b"V"  # a GNU volume header
        archive.addfile(info)
    with pytest.raises(FormatError, match="unsupported"):
        write(buffer.getvalue())


def test_input_that_does_not_start_at_offset_zero() -> None:
    tar = make_tar([Member("a", data=b"payload a"), Member("b", data=b"payload b")])
    source = io.BytesIO(b"junk-before" + tar)
    source.seek(len(b"junk-before"))
    out = io.BytesIO()
    result = write_estargz(source, out, WriterOptions(workers=1))
    layer = open_blob(out.getvalue(), result.toc_digest)
    assert read_file(layer, out.getvalue(), "b") == b"payload b"
