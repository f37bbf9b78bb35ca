"""The filesystem process opens the image its owner is about to mount, and prefetches
the files its workload record lists, as a head start."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, cast

import pytest
import trio

from lazybuild.errors import NotFoundError, RegistryError
from lazybuild.lazyfs import control, server
from lazybuild.lazyfs.server import Layers
from lazybuild.lazyfs.service import ImageAhead, parse_args
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Manifest
from lazybuild.oci.platform import Platform
from lazybuild.profile.record import RecordEntry
from lazybuild.registry.client import RegistryClient, ResolvedManifest
from lazybuild.registry.reference import Reference

MANIFEST = "sha256:" + "dd" * 32
LAYERS = [
    Descriptor(mediatypes.OCI_LAYER_GZIP, "sha256:" + f"{n:02x}" * 32, 100 + n) for n in (1, 2, 3)
]


class FakeClient:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.resolved: list[str] = []

    async def resolve_manifest(self, ref: Reference, platform: Platform) -> ResolvedManifest:
        self.resolved.append(str(ref))
        if self.failure is not None:
            raise self.failure
        manifest = Manifest(
            media_type=mediatypes.OCI_MANIFEST,
            config=Descriptor(mediatypes.OCI_CONFIG, "sha256:" + "cc" * 32, 10),
            layers=tuple(LAYERS),
        )
        return ResolvedManifest(ref.with_digest(MANIFEST), None, MANIFEST, manifest, b"")


async def open_image_ahead(
    client: FakeClient, layers: FakeLayers, image: str, *, with_record: bool = True
) -> None:
    """Resolve and open as the process does: the layers wait for the resolve."""
    ahead = ImageAhead(cast(RegistryClient, client), image)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                server.open_image_ahead,
                ahead,
                cast(Layers, layers),
                cast(RegistryClient, client),
                with_record=with_record,
            )
        )
        await trio.sleep(0.01)  # the layers are asked for before the image is resolved
        await ahead.resolve()


class FakeLayers:
    def __init__(self, failing: str | None = None) -> None:
        self.added: list[tuple[str, str]] = []
        self.prefetched: list[tuple[dict[str, list[str]], control.LayerRanges]] = []
        self.failing = failing

    async def add(self, ref_text: str, descriptor_json: dict[str, Any]) -> control.LayerAdded:
        digest = descriptor_json["digest"]
        if digest == self.failing:
            raise NotFoundError("blob unknown to registry")
        self.added.append((ref_text, digest))
        return control.LayerAdded(path="/mnt/x", mode="lazy", digest=digest)

    async def prefetch_files(
        self,
        files: dict[str, list[str]],
        ranges: control.LayerRanges,
        layers: Mapping[str, control.AddLayer] | None = None,
    ) -> tuple[int, int]:
        for digest in files:
            assert digest in {added for _, added in self.added}, "prefetch before its add"
        self.prefetched.append((files, ranges))
        return 0, 0


def test_every_layer_of_the_resolved_manifest_is_opened_under_the_pinned_reference() -> None:
    client, layers = FakeClient(), FakeLayers()
    trio.run(open_image_ahead, client, layers, "r.example/app:1")
    assert client.resolved == ["r.example/app:1"]
    assert sorted(digest for _, digest in layers.added) == [layer.digest for layer in LAYERS]
    assert {ref for ref, _ in layers.added} == {"r.example/app:1@" + MANIFEST}
    assert layers.prefetched == []  # the image has no workload record


def test_each_layer_prefetches_its_recorded_files_once_it_is_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = [
        RecordEntry("usr/bin/java", MANIFEST, 2),
        RecordEntry("lib/modules", MANIFEST, 2, ((0, 4096),)),
        RecordEntry("lib/libc.so.6", MANIFEST, 0),
    ]

    async def published(client: object, image: ResolvedManifest) -> list[RecordEntry]:
        assert image.manifest_digest == MANIFEST
        return entries

    monkeypatch.setattr(server, "published_record", published)
    layers = FakeLayers(failing=LAYERS[0].digest)  # no prefetch for a layer not opened
    trio.run(open_image_ahead, FakeClient(), layers, "r.example/app:1")
    top = LAYERS[2].digest
    assert layers.prefetched == [
        ({top: ["usr/bin/java", "lib/modules"]}, {top: {"lib/modules": [(0, 4096)]}})
    ]


def test_a_build_opens_its_base_ahead_without_the_image_s_workload_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def published(client: object, image: ResolvedManifest) -> list[RecordEntry]:
        raise AssertionError("a build on the image does not run its workload")

    monkeypatch.setattr(server, "published_record", published)
    layers = FakeLayers()
    trio.run(
        functools.partial(
            open_image_ahead, FakeClient(), layers, "r.example/app:1", with_record=False
        )
    )
    assert len(layers.added) == len(LAYERS) and layers.prefetched == []
    base = ["--mountpoint", "/m", "--control", "/c", "--state-dir", "/s"]
    assert parse_args([*base, "--no-open-image-record"]).open_image_record is False


def test_a_broken_record_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def published(client: object, image: ResolvedManifest) -> list[RecordEntry]:
        raise RegistryError("record blob unknown")

    monkeypatch.setattr(server, "published_record", published)
    layers = FakeLayers()
    with caplog.at_level(logging.INFO):
        trio.run(open_image_ahead, FakeClient(), layers, "r.example/app:1")
    assert len(layers.added) == len(LAYERS) and layers.prefetched == []
    assert "workload record" in caplog.text and "record blob unknown" in caplog.text


def test_a_layer_that_fails_is_left_to_the_owner(caplog: pytest.LogCaptureFixture) -> None:
    layers = FakeLayers(failing=LAYERS[1].digest)
    with caplog.at_level(logging.INFO):
        trio.run(open_image_ahead, FakeClient(), layers, "r.example/app:1")
    assert sorted(digest for _, digest in layers.added) == [LAYERS[0].digest, LAYERS[2].digest]
    assert "blob unknown to registry" in caplog.text


@pytest.mark.parametrize(
    ("image", "failure"),
    [("r.example/app:1", RegistryError("connection refused")), ("Not A Reference", None)],
)
def test_an_image_that_cannot_be_resolved_is_left_to_the_owner(
    image: str, failure: Exception | None, caplog: pytest.LogCaptureFixture
) -> None:
    layers = FakeLayers()
    with caplog.at_level(logging.INFO):
        trio.run(open_image_ahead, FakeClient(failure), layers, image)
    assert layers.added == []
    assert "ahead of its mount failed" in caplog.text


def test_the_image_to_open_is_an_option_of_the_process() -> None:
    base = ["--mountpoint", "/m", "--control", "/c", "--state-dir", "/s"]
    assert parse_args(base).open_image is None
    assert parse_args([*base, "--open-image", "r.example/app:1"]).open_image == "r.example/app:1"


def test_the_process_entry_leaves_the_mount_machinery_to_be_imported_later() -> None:
    # What lets the image's manifest be on its way while pyfuse3 and the layer code load.
    probe = (
        "import sys, lazybuild.lazyfs.service; "
        "print(sorted({'pyfuse3', 'lazybuild.lazyfs.layer'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
