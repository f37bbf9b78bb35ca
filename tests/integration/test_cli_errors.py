"""Bad input gets one clear line on stderr, exit status 1, no traceback, nothing left over.

Each case starts from a good eStargz image (the tiny Debian image converted by
lazybuild) and breaks one thing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lazybuild.oci import mediatypes
from tests.support.imagebuild import copy_layout
from tests.support.images import read_layout_image, replace_layer
from tests.support.registry import TokenRegistry, write_docker_config

pytestmark = pytest.mark.root


def lazybuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazybuild", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lazybuild: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def estargz_layout(tiny_image_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("esgz") / "layout"
    result = lazybuild("-q", "convert", f"oci:{tiny_image_layout}", f"oci:{out}")
    assert result.returncode == 0, result.stderr
    return out


def _top_blob(root: Path) -> bytes:
    image = read_layout_image(root)
    return image.blob(image.layers[-1]["digest"]).read_bytes()


def _truncate(root: Path) -> None:
    replace_layer(root, -1, _top_blob(root)[: len(_top_blob(root)) // 2])


def _toc_offset_out_of_range(root: Path) -> None:
    blob = bytearray(_top_blob(root))
    blob[-35:-19] = b"%016x" % (len(blob) * 2)  # the footer's offset field, 16 hex digits
    replace_layer(root, -1, bytes(blob))


def _garbled_footer(root: Path) -> None:
    blob = bytearray(_top_blob(root))
    blob[-19:-13] = b"XXXXXX"  # the footer's STARGZ magic
    replace_layer(root, -1, bytes(blob))


def _wrong_toc_digest(root: Path) -> None:
    layer = read_layout_image(root).layers[-1]
    annotations = {**layer["annotations"], mediatypes.TOC_DIGEST_ANNOTATION: "sha256:" + "0" * 64}
    replace_layer(root, -1, annotations=annotations)


def _corrupt_blob_in_place(root: Path) -> None:
    image = read_layout_image(root)
    path = image.blob(image.layers[-1]["digest"])
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _unknown_media_type(root: Path) -> None:
    replace_layer(root, 0, mediaType="application/vnd.example.unknown")


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        (_truncate, ("layer 3",)),
        (_toc_offset_out_of_range, ("layer 3", "TOC offset")),
        (_garbled_footer, ("layer 3", "footer")),
        (_wrong_toc_digest, ("layer 3", "TOC digest")),
        (_corrupt_blob_in_place, ("sha256:",)),
        (_unknown_media_type, ("layer 1", "application/vnd.example.unknown")),
    ],
    ids=["truncated", "toc-offset", "bad-footer", "toc-digest", "blob-digest", "media-type"],
)
def test_broken_layer(
    estargz_layout: Path,
    tmp_path: Path,
    breakage: Callable[[Path], None],
    fragments: tuple[str, ...],
) -> None:
    broken = copy_layout(estargz_layout, tmp_path / "broken")
    for blob in (broken / "blobs" / "sha256").iterdir():  # hardlinked: never edit the original
        shutil.copy2(blob, blob.with_suffix(".tmp"))
        blob.with_suffix(".tmp").replace(blob)
    breakage(broken)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    result = lazybuild("-q", "convert", "--tmpdir", str(scratch), f"oci:{broken}", f"oci:{out}")
    assert_one_line_error(result, *fragments)
    assert list(scratch.iterdir()) == [], "temporary files were left behind"
    staging = out / "blobs" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_unreachable_registry() -> None:
    result = lazybuild("inspect", "127.0.0.1:1/nothing/here:latest")
    assert_one_line_error(result, "127.0.0.1:1")


def test_malformed_reference() -> None:
    assert_one_line_error(lazybuild("inspect", "Not A::Reference"), "Not A::Reference")


def test_missing_layout(tmp_path: Path) -> None:
    assert_one_line_error(lazybuild("inspect", f"oci:{tmp_path}/none"), "not an OCI image layout")


def test_wrong_credentials(token_registry: TokenRegistry, tmp_path: Path) -> None:
    config = write_docker_config(
        tmp_path / "config.json", token_registry.host, token_registry.username, "wrong-password"
    )
    result = lazybuild(
        "--docker-config", str(config), "inspect", f"{token_registry.host}/private/image:latest"
    )
    assert_one_line_error(result, token_registry.host, "refused")
