"""lazybuild and the reference tools agree, both ways.

- Images converted by ``ctr-remote image convert --estargz --oci`` are read by
  lazybuild's reader: every entry equals the one in the original layer.
- Images converted by lazybuild pull and run in containerd and in dockerd, and the
  root filesystems containerd and dockerd unpack equal the original image's.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from lazybuild.cli.main import main
from lazybuild.estargz.layerformat import LayerFormat
from lazybuild.image.convert import ConvertOptions, ConvertResult, convert_image
from lazybuild.image.store import open_source, open_target
from lazybuild.progress.lines import Progress
from lazybuild.registry.client import RegistryClient
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.images import read_layout_image
from tests.support.registry import Registry
from tests.support.trees import (
    ESTARGZ_ARTEFACTS,
    Facts,
    Tree,
    directory_tree,
    flatten,
    layer_tree,
    tar_tree,
)

pytestmark = pytest.mark.root

# What a container runtime adds to a root filesystem by itself.
RUNTIME_ADDED = frozenset({".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf"})
RUNTIME_MOUNTPOINTS = ("dev", "proc", "sys", "etc/mtab")


def _convert(source: str, destination: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["-q", "convert", source, destination]) == 0
    return capsys.readouterr().out.strip()


def test_ctr_remote_output_reads_the_same_through_lazybuild(
    rich_image: str,
    rich_image_layout: Path,
    registry: Registry,
    containerd: Containerd,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = f"{registry.host}/test/rich:ctr-remote"
    containerd.convert_to_estargz(rich_image, reference)
    # Registry -> layout: eStargz layers are kept byte for byte, so the layout holds
    # exactly ctr-remote's blobs, now read by lazybuild's reader.
    _convert(reference, f"oci:{tmp_path / 'copy'}", capsys)
    original = read_layout_image(rich_image_layout)
    copied = read_layout_image(tmp_path / "copy")
    assert main(["inspect", "--json", f"oci:{tmp_path / 'copy'}"]) == 0
    report = capsys.readouterr().out
    assert report.count(f'"format": "{LayerFormat.ESTARGZ.value}"') == len(original.layers)
    for number, (before, after) in enumerate(zip(original.layers, copied.layers, strict=True)):
        expected = layer_tree(original.blob(before["digest"]))
        actual = layer_tree(copied.blob(after["digest"]))
        assert actual.entries == expected.entries, f"layer {number + 1} differs"
        assert actual.hardlinks == expected.hardlinks


def _runtime_view(entries: dict[str, Facts]) -> dict[str, Facts]:
    """A root filesystem without what runtimes add and without eStargz's own files."""
    kept = {}
    for path, facts in entries.items():
        if path in RUNTIME_ADDED or path in ESTARGZ_ARTEFACTS:
            continue
        if any(path == m or path.startswith(m + "/") for m in RUNTIME_MOUNTPOINTS):
            continue
        kept[path] = facts
    return kept


def _surviving_hardlinks(layers: list[Tree], merged: dict[str, Facts]) -> set[frozenset[str]]:
    """Hardlink groups of the root filesystem ``layers`` make: a name stays in its layer's
    group when it is in ``merged`` and no later layer puts another entry there."""
    groups = set()
    for number, layer in enumerate(layers):
        later = set().union(*(upper.entries.keys() for upper in layers[number + 1 :]))
        for group in layer.hardlinks:
            kept = frozenset(p for p in group if p in merged and p not in later)
            if len(kept) > 1:
                groups.add(kept)
    return groups


def test_lazybuild_output_runs_in_containerd_and_dockerd(
    rich_image: str,
    rich_image_layout: Path,
    registry: Registry,
    containerd: Containerd,
    dockerd: Dockerd,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = f"{registry.host}/test/rich:lazybuild"
    _convert(rich_image, reference, capsys)
    check = (
        "test ! -e /etc/motd && test ! -e /usr/bin/apt-get"
        " && cat /srv/hello.txt /usr/share/doc/README"
    )
    expected_output = "hello\ndocs were replaced\n"
    assert containerd.run_image(reference, "/bin/sh", "-c", check) == expected_output

    original = read_layout_image(rich_image_layout)
    original_layers = [layer_tree(original.blob(d["digest"])) for d in original.layers]
    merged = flatten(original_layers)
    # containerd's unpacked tree (the snapshot its containers start from) keeps every
    # fact: xattrs, mtimes to the second, hardlinks as shared inodes.
    # The TOC and landmark are tar entries too, so containerd unpacks them as files.
    with containerd.mounted_image(reference, tmp_path / "containerd-rootfs") as root:
        in_containerd = directory_tree(root)
    unpacked_files = {p: f for p, f in in_containerd.entries.items() if p not in ESTARGZ_ARTEFACTS}
    expected_tree = {p: f for p, f in merged.items() if p and p not in ESTARGZ_ARTEFACTS}
    assert sorted(unpacked_files) == sorted(expected_tree)
    for path, facts in expected_tree.items():
        got = unpacked_files[path]
        # Layer facts and stat facts both truncate mtimes to the second, as Docker shows them.
        assert got == facts, path
    assert in_containerd.hardlinks == _surviving_hardlinks(original_layers, merged)
    assert frozenset({"srv/big.bin", "srv/big-hardlink.bin"}) in in_containerd.hardlinks
    hello = unpacked_files["srv/hello.txt"]
    assert (hello.mode, hello.uid, hello.gid) == (0o4755, 1234, 5678)
    assert hello.xattrs == (("user.lazybuild.note", b"\x00binary\xff"),)

    dockerd.docker("pull", reference)
    run = dockerd.docker("run", "--rm", "--network", "none", reference, "/bin/sh", "-c", check)
    assert run.stdout == expected_output

    container = dockerd.docker("create", reference, "/bin/true").stdout.strip()
    try:
        exported = subprocess.run(
            ["docker", "export", container], env=dockerd.env(), capture_output=True, check=True
        ).stdout
    finally:
        dockerd.docker("rm", container)
    unpacked = _runtime_view(tar_tree(io.BytesIO(exported)).entries)
    expected = _runtime_view(merged)
    assert sorted(unpacked) == sorted(expected)
    # Directories the runtime wrote into (/, /etc) have new mtimes. Elsewhere mtimes agree
    # to the second.
    # `docker export` writes only security.capability of all xattrs (moby's archive
    # package), so xattrs are compared where they survive: in the layers (other tests).
    touched = {"", "etc"}
    for path, facts in expected.items():
        got = unpacked[path]
        exported_xattrs = tuple(x for x in facts.xattrs if x[0] == "security.capability")
        assert replace(got, mtime=0) == replace(facts, mtime=0, xattrs=exported_xattrs), path
        if path not in touched:
            assert got.mtime == facts.mtime, path


def test_cross_repository_convert_mounts_instead_of_uploading(
    rich_image: str, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    converted = f"{registry.host}/test/rich:esgz-for-mount"
    first = _convert(rich_image, converted, capsys)

    async def convert_to_other_repository() -> ConvertResult:
        async with RegistryClient() as client:
            source = open_source(converted, client)
            target = open_target(f"{registry.host}/other/rich:esgz", client, source)
            return await convert_image(source, target, ConvertOptions(), Progress(quiet=True))

    result = trio.run(convert_to_other_repository)
    assert result.root.digest == first
    assert [o.transfer for o in result.layers] == ["mounted"] * len(result.layers)
    assert not any(o.converted for o in result.layers)
