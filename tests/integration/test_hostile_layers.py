"""Hostile tar bytes through the real commands: a base layer that is not eStargz
(`lazybuild mount`, the path `run`, `build` and `optimize` share) and an `ADD` archive
in a build context. Whatever the tar says, a canary tree outside the extraction root
keeps every attribute, and each command ends cleanly."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from pathlib import Path

import pytest

from lazybuild.oci.layout import OciLayout
from tests.e2e.buildsupport import lazybuild
from tests.integration.test_lazy_commands import lazybuild_mount, mounts_under
from tests.support.imagebuild import Layer, push_oci_layout, write_image
from tests.support.registry import Registry
from tests.unit.untar.hostile import Canary, hostile_attributes, member, tar_bytes

pytestmark = pytest.mark.root


def _hostile_layer_tar(canary: Path) -> bytes:
    return tar_bytes(
        (member("a/", tarfile.DIRTYPE), b""),
        (hostile_attributes("a/victim/"), b""),
        (member("a", tarfile.SYMTYPE, linkname=str(canary)), b""),
        (member("b/", tarfile.DIRTYPE), b""),
        (member("b/file"), b"kept"),
        (hostile_attributes("b/"), b""),  # the last entry for b wins
    )


def _image_with_layer(layout_dir: Path, tar: bytes) -> None:
    layout = OciLayout.create(layout_dir)
    blob = gzip.compress(tar, mtime=0)
    digest = layout.write_blob(blob)
    layer = Layer(digest, "sha256:" + hashlib.sha256(tar).hexdigest(), len(blob))
    write_image(layout, [layer])


def test_mounting_a_hostile_layer_changes_nothing_outside_the_state_dir(
    registry: Registry, tmp_path: Path
) -> None:
    canary = Canary.plant(tmp_path / "host-dir")
    _image_with_layer(tmp_path / "layout", _hostile_layer_tar(canary.root))
    push_oci_layout(tmp_path / "layout", registry.host, "test/hostile", "swap")
    state = tmp_path / "state"
    target = tmp_path / "mnt"
    with lazybuild_mount(state, f"{registry.host}/test/hostile:swap", target):
        assert (target / "a").is_symlink()
        assert (target / "b" / "file").read_bytes() == b"kept"
        assert oct((target / "b").stat().st_mode & 0o7777) == oct(0o777)
    canary.assert_untouched()
    assert mounts_under(state) == []


def test_adding_a_hostile_archive_changes_nothing_outside_the_build(tmp_path: Path) -> None:
    canary = Canary.plant(tmp_path / "host-dir")
    context = tmp_path / "context"
    context.mkdir()
    (context / "evil.tar").write_bytes(_hostile_layer_tar(canary.root))
    (context / "Dockerfile").write_text("FROM scratch\nADD evil.tar /\n")
    state = tmp_path / "state"
    out = tmp_path / "out"
    lazybuild(
        state,
        "build",
        "--progress=plain",
        "--no-optimize",
        "-o",
        f"type=local,dest={out}",
        str(context),
    )
    canary.assert_untouched()
    assert (out / "b" / "file").read_bytes() == b"kept"
    assert mounts_under(state) == []
