"""Recorded paths -> the top-most layer that serves them, in both layer notations."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lazybuild.estargz.toc import TOC, TOCEntry
from lazybuild.profile.layers import (
    DirectoryLayerContents,
    LayerContents,
    TarLayerContents,
    assign_to_layers,
)


def tar_layer(*names: str) -> TarLayerContents:
    """Names ending in "/" are directories."""
    return TarLayerContents({n.rstrip("/"): n.endswith("/") for n in names})


BASE = tar_layer("etc/", "etc/passwd", "etc/motd", "usr/", "usr/bin/", "usr/bin/cat", "opt/data/a")


def test_a_path_belongs_to_the_top_most_layer_that_has_it() -> None:
    upper = tar_layer("etc/passwd", "app/main.py")
    result = assign_to_layers(["etc/passwd", "usr/bin/cat", "app/main.py"], [BASE, upper])
    assert result.per_layer == (("usr/bin/cat",), ("etc/passwd", "app/main.py"))
    assert result.files == (("etc/passwd", 1), ("usr/bin/cat", 0), ("app/main.py", 1))
    assert result.unassigned == ()


def test_order_is_first_access_and_repeats_are_ignored() -> None:
    result = assign_to_layers(["usr/bin/cat", "/etc/passwd", "usr/bin/cat"], [BASE])
    assert result.per_layer == (("usr/bin/cat", "etc/passwd"),)


def test_files_in_no_layer_are_unassigned() -> None:
    result = assign_to_layers(["tmp/written-by-workload", "etc/passwd"], [BASE])
    assert result.unassigned == ("tmp/written-by-workload",)
    assert result.per_layer == (("etc/passwd",),)


def test_whiteouts_hide_lower_layers() -> None:
    upper = tar_layer("etc/.wh.motd", ".wh.usr")
    result = assign_to_layers(["etc/motd", "usr/bin/cat", "etc/passwd"], [BASE, upper])
    assert result.unassigned == ("etc/motd", "usr/bin/cat")
    assert result.per_layer == (("etc/passwd",), ())


def test_an_opaque_directory_hides_lower_contents_but_not_its_own() -> None:
    upper = tar_layer("opt/data/", "opt/data/.wh..wh..opq", "opt/data/b")
    result = assign_to_layers(["opt/data/a", "opt/data/b"], [BASE, upper])
    assert result.unassigned == ("opt/data/a",)
    assert result.per_layer == ((), ("opt/data/b",))


def test_a_file_replacing_a_directory_hides_what_was_below_it() -> None:
    upper = tar_layer("usr/bin")  # not a directory any more (a symlink, say)
    assert assign_to_layers(["usr/bin/cat"], [BASE, upper]).unassigned == ("usr/bin/cat",)


def test_a_whiteout_above_is_overridden_by_a_higher_layer_that_adds_the_file_back() -> None:
    middle = tar_layer("etc/.wh.motd")
    top = tar_layer("etc/motd")
    assert assign_to_layers(["etc/motd"], [BASE, middle, top]).per_layer == ((), (), ("etc/motd",))


def test_from_tar_and_from_toc_agree() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in [("etc", tarfile.DIRTYPE), ("etc/.wh.motd", tarfile.REGTYPE)]:
            info = tarfile.TarInfo(name)
            info.type = kind
            archive.addfile(info)
        archive.addfile(tarfile.TarInfo("stargz.index.json"))
    buffer.seek(0)
    from_tar = TarLayerContents.from_tar(buffer)
    toc = TOC(
        version=1,
        entries=[
            TOCEntry(name="etc/", type="dir"),
            TOCEntry(name="etc/.wh.motd", type="reg"),
            TOCEntry(name=".no.prefetch.landmark", type="reg", size=1),
        ],
    )
    from_toc = TarLayerContents.from_toc(toc)
    for contents in (from_tar, from_toc):
        assert contents.paths == frozenset({"etc"})
        assert assign_to_layers(["etc/motd"], [BASE, contents]).unassigned == ("etc/motd",)


def test_file_sizes_from_tar_and_from_toc() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("big.bin")
        info.size = 5000
        archive.addfile(info, io.BytesIO(bytes(5000)))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "big.bin"
        archive.addfile(link)
    buffer.seek(0)
    toc = TOC(
        version=1,
        entries=[
            TOCEntry(name="big.bin", type="reg", size=5000),
            TOCEntry(name="link", type="symlink", link_name="big.bin"),
        ],
    )
    for contents in (TarLayerContents.from_tar(buffer), TarLayerContents.from_toc(toc)):
        assert contents.size("big.bin") == 5000
        assert contents.size("link") == 0 and contents.size("not/there") == 0


def _directory_layer(root: Path) -> DirectoryLayerContents:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.mknod(root / "etc/motd", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    (root / "opt/data").mkdir(parents=True)
    os.setxattr(root / "opt/data", "trusted.overlay.opaque", b"y")
    (root / "opt/data/b").write_text("b")
    (root / "usr").symlink_to("/usr")  # must never be followed
    return DirectoryLayerContents(root)


@pytest.mark.root
def test_directory_layers_in_overlay_notation(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("whiteout devices and trusted xattrs need root")
    upper: LayerContents = _directory_layer(tmp_path / "layer")
    paths = ["etc/passwd", "etc/motd", "opt/data/a", "opt/data/b", "usr/bin/cat", "usr"]
    result = assign_to_layers(paths, [BASE, upper])
    assert result.per_layer == ((), ("etc/passwd", "opt/data/b", "usr"))
    assert result.unassigned == ("etc/motd", "opt/data/a", "usr/bin/cat")


def test_a_directory_layer_without_the_parent_leaves_the_path_to_lower_layers(
    tmp_path: Path,
) -> None:
    (tmp_path / "other").mkdir()
    upper = DirectoryLayerContents(tmp_path)
    assert assign_to_layers(["usr/bin/cat"], [BASE, upper]).per_layer == (("usr/bin/cat",), ())
