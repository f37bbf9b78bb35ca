"""Layers whose every chunk is local, mounted from their whole image files
(``lazyfs.whole_images``), through the CLI as a user runs it, against a real registry,
FUSE, EROFS and overlayfs.

A first mount serves the layers lazily and, once the background fetch has every chunk,
writes each layer's whole image; the next mount mounts those files and asks the
registry for nothing; the tree equals the unpacked image, every fact; fsck.erofs
accepts each image; a damaged one is never mounted; ``du`` and ``prune`` know them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.lazyfs import whole_images
from lazybuild.lazyfs.imagecache import IMAGE_CACHE_DIR
from tests.integration.test_erofs_serving import _mounts, _state_dir_clean
from tests.integration.test_lazy_commands import (
    _expected_tree,
    convert,
    lazybuild_argv,
    lazybuild_mount,
    mounts_under,
)
from tests.support.erofsimage import fsck
from tests.support.faultproxy import FaultProxy
from tests.support.images import read_layout_image
from tests.support.registry import Registry
from tests.support.trees import directory_tree

pytestmark = pytest.mark.root
WHOLE_TIMEOUT = 120.0


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting EROFS needs root")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    yield root
    subprocess.run(lazybuild_argv(root, "prune"), check=False, capture_output=True)
    assert mounts_under(root) == []


def _images(state: Path) -> list[Path]:
    return sorted((state / IMAGE_CACHE_DIR).glob(f"*{whole_images.WHOLE_IMAGE_SUFFIX}"))


def _wait_for_images(state: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + WHOLE_TIMEOUT
    while len(_images(state)) < count:
        assert time.monotonic() < deadline, f"whole images: {_images(state)}"
        time.sleep(0.2)
    return _images(state)


def _layer_digests(registry: Registry, name: str, tag: str) -> list[str]:
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{name}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        manifest = json.load(answer)
    return [layer["digest"] for layer in manifest["layers"]]


def _erofs_sources(state: Path) -> list[str]:
    return sorted(source for _, kind, source in _mounts(state) if kind == "erofs")


def test_a_layer_fetched_whole_is_mounted_from_its_image_next_time(
    rich_image: str, rich_image_layout: Path, registry: Registry, state: Path, tmp_path: Path
) -> None:
    layers = len(read_layout_image(rich_image_layout).layers)
    reference = f"{registry.host}/test/rich:whole-images"
    convert(rich_image, reference)
    digests = _layer_digests(registry, "test/rich", "whole-images")
    assert len(digests) == layers
    target = tmp_path / "mnt"
    with lazybuild_mount(state, reference, target):
        assert all(source.endswith(".erofs") for source in _erofs_sources(state))
        images = _wait_for_images(state, layers)
    for image in images:
        fsck(image)
    # Through a proxy that counts: the second mount asks the registry for no blob.
    with FaultProxy(registry.host) as proxy:
        proxied = reference.replace(registry.host, proxy.host)
        with lazybuild_mount(state, proxied, target):
            assert _erofs_sources(state) == [str(image) for image in images]
            tree = directory_tree(target)
        layer_reads = [
            seen for seen in proxy.requests(path="/blobs/") if seen.path.endswith(tuple(digests))
        ]
    assert layer_reads == []
    assert tree.entries == _expected_tree(rich_image_layout)
    _state_dir_clean(state)
    shown = subprocess.run(
        lazybuild_argv(state, "du"), capture_output=True, text=True, check=True
    ).stdout
    (row,) = [line for line in shown.splitlines() if line.startswith("whole layers")]
    assert row.split()[2:4] == [str(layers), "images"], row
    pruned = subprocess.run(
        lazybuild_argv(state, "prune"), capture_output=True, text=True, check=True
    ).stdout
    assert f"freed {layers} whole layer images" in pruned, pruned
    assert _images(state) == []


def test_a_damaged_whole_image_is_never_mounted(
    rich_image: str, registry: Registry, state: Path, tmp_path: Path
) -> None:
    reference = f"{registry.host}/test/rich:whole-damaged"
    convert(rich_image, reference)
    target = tmp_path / "mnt"
    with lazybuild_mount(state, reference, target):
        images = _wait_for_images(state, 1)
    damaged = images[-1]
    os.truncate(damaged, damaged.stat().st_size - 4096)
    with lazybuild_mount(state, reference, target):
        sources = _erofs_sources(state)
        tree = directory_tree(target)
    assert str(damaged) not in sources
    assert any(source.endswith(".erofs") for source in sources), sources
    assert tree.entries  # served lazily instead
    _state_dir_clean(state)
