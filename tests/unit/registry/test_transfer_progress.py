"""The registry client reports uploads and whole-blob downloads to the active board."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lazybuild.errors import DigestMismatchError
from lazybuild.progress.transfer import Transfer, TransferBoard, reporting
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

from .fakes import REGISTRY, FakeRegistry, descriptor_for, digest_of, run

APP = Reference.parse(f"{REGISTRY}/team/app:v1")


class Recording(TransferBoard):
    """Every figure reported, per digest, and how each transfer ended."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, list[int]] = {}
        self.outcomes: dict[str, bool] = {}

    def begin(self, digest: str, total: int | None, verb: str, *, ago: float = 0.0) -> Transfer:
        self.figures[f"{verb} {digest}"] = []
        return super().begin(digest, total, verb, ago=ago)

    def moved(self, transfer: Transfer, done: int) -> None:
        self.figures[f"{transfer.verb} {transfer.digest}"].append(done)
        super().moved(transfer, done)

    def finished(self, transfer: Transfer, *, ok: bool) -> None:
        self.outcomes[f"{transfer.verb} {transfer.digest}"] = ok
        super().finished(transfer, ok=ok)


def with_board(fake: FakeRegistry, body: Any, **options: Any) -> Recording:
    board = Recording()

    async def main() -> None:
        with reporting(board):
            async with RegistryClient(transport=fake.transport(), **options) as client:
                await body(client)

    run(main)
    return board


def test_a_monolithic_upload_is_reported_as_it_is_sent() -> None:
    fake = FakeRegistry()
    data = os.urandom(600 * 1024)  # three 256 KiB slices
    descriptor = descriptor_for(data)

    async def body(client: RegistryClient) -> None:
        assert await client.push_blob(APP, descriptor, data) == "uploaded"

    board = with_board(fake, body)
    assert fake.blobs[digest_of(data)] == data
    figures = board.figures[f"pushing {descriptor.digest}"]
    assert figures[:4] == [0, 0, 256 * 1024, 512 * 1024]
    assert figures[-1] == len(data)
    assert board.outcomes == {f"pushing {descriptor.digest}": True}
    (put,) = [r for r in fake.registry_requests() if r.method == "PUT"]
    assert put.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in put.headers


def test_a_chunked_upload_counts_on_across_its_chunks(tmp_path: Path) -> None:
    fake = FakeRegistry()
    data = os.urandom(2500)
    source = tmp_path / "layer"
    source.write_bytes(data)
    descriptor = descriptor_for(data)

    async def body(client: RegistryClient) -> None:
        assert await client.push_blob(APP, descriptor, source) == "uploaded"

    options = {"monolithic_upload_limit": 1000, "upload_chunk_size": 1000}
    board = with_board(fake, body, **options)
    assert fake.blobs[digest_of(data)] == data
    figures = board.figures[f"pushing {descriptor.digest}"]
    assert figures == sorted(figures)
    assert {1000, 2000, 2500} <= set(figures)
    patches = [r for r in fake.registry_requests() if r.method == "PATCH"]
    assert [r.headers["content-length"] for r in patches] == ["1000", "1000", "500"]


def test_blobs_not_uploaded_are_not_reported() -> None:
    fake = FakeRegistry()
    data = b"already there"
    descriptor = fake.add_blob("team/app", data)

    async def body(client: RegistryClient) -> None:
        assert await client.push_blob(APP, descriptor, data) == "exists"

    assert with_board(fake, body).figures == {}


def test_a_download_is_reported_and_ends_verified() -> None:
    fake = FakeRegistry()
    data = os.urandom(300_000)
    descriptor = fake.add_blob("team/app", data)

    async def body(client: RegistryClient) -> None:
        assert b"".join([p async for p in client.stream_blob(APP, descriptor)]) == data

    board = with_board(fake, body)
    figures = board.figures[f"downloading {descriptor.digest}"]
    assert figures[-1] == len(data) and figures == sorted(figures)
    assert board.outcomes == {f"downloading {descriptor.digest}": True}
    assert board.transfers == []


def test_a_download_that_fails_verification_ends_failed() -> None:
    fake = FakeRegistry()
    data = os.urandom(1000)
    descriptor = fake.add_blob("team/app", data)
    fake.blobs[descriptor.digest] = os.urandom(1000)  # the registry serves other bytes

    async def body(client: RegistryClient) -> None:
        try:
            async for _ in client.stream_blob(APP, descriptor):
                pass
        except DigestMismatchError:
            return
        raise AssertionError("a wrong blob was not refused")

    board = with_board(fake, body)
    assert board.outcomes == {f"downloading {descriptor.digest}": False}
    assert board.transfers == []


def test_without_a_board_the_body_is_sent_as_bytes() -> None:
    fake = FakeRegistry()
    data = os.urandom(1000)

    async def main() -> None:
        async with RegistryClient(transport=fake.transport()) as client:
            await client.push_blob(APP, descriptor_for(data), data)

    run(main)
    (put,) = [r for r in fake.registry_requests() if r.method == "PUT"]
    assert put.content == data
