"""A build through the daemon carries its local named contexts after the context, each
unpacked (with untar's archive policy) into a directory of its own; the header must
name every one it sends."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.api.control.v1 import control_pb2
from lazybuild.daemon.buildcontext import BuildRequestError, receive


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return out.getvalue()


def _requests(
    named: dict[str, str], chunks: list[tuple[str, bytes]]
) -> Iterator[control_pb2.BuildRequest]:
    header = control_pb2.BuildHeader(
        dockerfile_name="Dockerfile", dockerfile=b"FROM scratch\n", named_contexts=named
    )
    yield control_pb2.BuildRequest(header=header)
    yield control_pb2.BuildRequest(context_chunk=_tar({"ctx.txt": b"c"}))
    for name, data in chunks:
        chunk = control_pb2.NamedContextChunk(name=name, data=data)
        yield control_pb2.BuildRequest(named_context_chunk=chunk)


def test_local_named_contexts_arrive_as_directories(tmp_path: Path) -> None:
    data = _tar({"a.txt": b"a"})
    named = {"docs": "local", "empty": "local", "base": "docker-image://alpine"}
    got = receive(_requests(named, [("docs", data[:700]), ("docs", data[700:])]), tmp_path, 1 << 20)
    assert (got.named_contexts["docs"] / "a.txt").read_bytes() == b"a"
    assert list(got.named_contexts["empty"].iterdir()) == []
    assert set(got.named_contexts) == {"docs", "empty"}
    assert not list(tmp_path.glob("*.tar"))


@pytest.mark.parametrize(
    ("named", "chunks", "message"),
    [
        ({}, [("docs", b"x")], "did not name as a local one"),
        ({"docs": "docker-image://a"}, [("docs", b"x")], "did not name as a local one"),
        ({"docs": "https://x"}, [], "is not one"),
        ({"a": "local", "b": "local"}, [("b", b"x"), ("a", b"x")], "in one piece"),
        ({"docs": "local"}, [("docs", _tar({"../out": b"x"}))], "docs"),
        # A layout named by the client's path is refused: the daemon reads none.
        ({"base": "oci-layout:///home/u/layout:v1"}, [], "is not one"),
        ({"base": "oci-layout:///home/u/layout"}, [("base", b"x")], "did not name"),
    ],
)
def test_bad_named_contexts_refuse_the_call(
    named: dict[str, str], chunks: list[tuple[str, bytes]], message: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(Exception, match=message):
        receive(_requests(named, chunks), work, 1 << 20)
    assert not (tmp_path / "out").exists()


def test_named_contexts_count_towards_the_bound(tmp_path: Path) -> None:
    big = _tar({"big": b"x" * 4096})
    with pytest.raises(BuildRequestError, match="larger than the daemon takes"):
        receive(_requests({"docs": "local"}, [("docs", big)]), tmp_path, 4096)


def test_an_oci_layout_arrives_as_files_only(tmp_path: Path) -> None:
    blob = b'{"schemaVersion": 2}'
    data = _tar({"oci-layout": b"{}", "index.json": b"{}", "blobs/sha256/ab": blob})
    got = receive(_requests({"base": "oci-layout://:v1"}, [("base", data)]), tmp_path, 1 << 20)
    assert (got.named_contexts["base"] / "blobs" / "sha256" / "ab").read_bytes() == blob

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        link = tarfile.TarInfo("blobs")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        archive.addfile(link)
    work = tmp_path / "again"
    work.mkdir()
    with pytest.raises(BuildRequestError, match="is a symlink"):
        receive(
            _requests({"base": "oci-layout://@sha256:" + "a" * 64}, [("base", out.getvalue())]),
            work,
            1 << 20,
        )
