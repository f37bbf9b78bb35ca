"""Fixtures shared by the integration tests (the daemons live in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imagebuild import push_oci_layout
from tests.support.images import make_rich_image
from tests.support.registry import Registry


@pytest.fixture(scope="session")
def rich_image_layout(debian_image_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian image plus an upper layer with whiteouts, an opaque directory, a
    multi-chunk file, a hardlink, a symlink, a fifo, odd owners and modes, and xattrs."""
    return make_rich_image(debian_image_layout, tmp_path_factory.mktemp("rich"))


@pytest.fixture(scope="session")
def rich_image(registry: Registry, rich_image_layout: Path) -> str:
    """`rich_image_layout` pushed as plain gzip: "127.0.0.1:PORT/test/rich:gzip"."""
    push_oci_layout(rich_image_layout, registry.host, "test/rich", "gzip")
    return f"{registry.host}/test/rich:gzip"
