"""`lazybuild run` and `mount` of an image in an OCI layout directory (`oci:DIR[:tag]`):
eStargz layers are served lazily from the layout's blobs, the others unpacked; no
registry is involved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazybuild.cli.main import main

pytestmark = pytest.mark.root


def _lazybuild(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lazybuild", "--state-dir", str(state), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def estargz_layout(tiny_image_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("tiny-esgz") / "layout"
    assert main(["-q", "convert", f"oci:{tiny_image_layout}", f"oci:{layout}:v1"]) == 0
    return layout


def test_run_unpacks_the_layers_of_a_plain_layout(tiny_image_layout: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = _lazybuild(
        tmp_path / "state", "run", "--fetch-report", str(report), f"oci:{tiny_image_layout}"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the upper layer\n"
    assert "3 layer(s) are not eStargz" in result.stderr
    # Whiteouts and opaque directories of the upper layer apply.
    result = _lazybuild(
        tmp_path / "state",
        "run",
        f"oci:{tiny_image_layout}:latest",
        "/usr/bin/cat",
        "/opt/data/new.txt",
        "/etc/motd",
    )
    assert result.returncode == 1
    assert result.stdout == "new\n"


def test_run_and_mount_serve_estargz_layers_lazily(estargz_layout: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    report = tmp_path / "report.json"
    result = _lazybuild(
        state,
        "run",
        "--fetch-report",
        str(report),
        f"oci:{estargz_layout}:v1",
        "/usr/bin/echo",
        "lazy",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "lazy\n"
    layers = json.loads(report.read_text())["layers"]
    assert len(layers) == 3
    assert {layer["mode"] for layer in layers} <= {"lazy", "local"}, layers

    target = tmp_path / "mnt"
    target.mkdir()
    argv = [sys.executable, "-m", "lazybuild", "--state-dir", str(state), "mount"]
    process = subprocess.Popen(
        [*argv, f"oci:{estargz_layout}:v1", str(target)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (target / "hello.txt").exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the mount did not come up"
            time.sleep(0.1)
        assert (target / "hello.txt").read_text() == "hello from the upper layer\n"
        assert not (target / "etc/motd").exists()
        assert sorted(p.name for p in (target / "opt/data").iterdir()) == ["new.txt"]
    finally:
        _lazybuild(state, "umount", str(target))
        status = process.wait(timeout=60)
        if process.stderr is not None:
            process.stderr.close()
        assert status == 0


def test_a_corrupt_layout_blob_is_refused(tiny_image_layout: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(tiny_image_layout, layout)
    manifest_blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = manifest_blobs[-1]  # a layer
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    result = _lazybuild(tmp_path / "state", "run", f"oci:{layout}")
    assert result.returncode == 1
    (error,) = [
        line for line in result.stderr.splitlines() if line.startswith("lazybuild: error: ")
    ]
    assert "is corrupt" in error, error
