"""Build and run the Go reference checker for eStargz blobs (``main.go`` next to this file).

The checker links the reference implementation (Debian's
``golang-github-containerd-stargz-snapshotter-dev``, GOPATH mode), so lazybuild's
writer can be checked against the library that stargz-snapshotter itself uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("main.go")
SYSTEM_GOPATH = "/usr/share/gocode"


def go_available() -> bool:
    return shutil.which("go") is not None


def build_go_checker(cache_dir: Path) -> Path:
    """The checker binary, built once per version of ``main.go`` and cached in ``cache_dir``."""
    source = SOURCE.read_bytes()
    binary = cache_dir / f"gochecker-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gochecker-") as gopath:
        package = Path(gopath, "src", "gochecker")
        package.mkdir(parents=True)
        (package / "main.go").write_bytes(source)
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{gopath}:{SYSTEM_GOPATH}",
            "GOFLAGS": "",
            "CGO_ENABLED": "0",
        }
        env.setdefault("GOCACHE", str(cache_dir / "go-build-cache"))
        partial = cache_dir / f".{binary.name}.{os.getpid()}"
        result = subprocess.run(
            ["go", "build", "-o", str(partial), "gochecker"],
            env=env,
            cwd=gopath,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the Go checker failed:\n{result.stderr}")
        partial.replace(binary)  # atomic, so parallel test runs never see half a binary
    return binary


def _run(args: list[str]) -> dict[str, Any]:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def run_go_checker(binary: Path, blob: Path, toc_digest: str) -> dict[str, Any]:
    """Open, verify and fully read ``blob`` with the reference library; its JSON report.

    Raises ``AssertionError`` (with the checker's message) when the blob is rejected.
    """
    return _run([str(binary), str(blob), toc_digest])


def build_reference_blob(
    binary: Path, tar: Path, out: Path, prioritized: list[str] | None = None
) -> dict[str, Any]:
    """Convert ``tar`` with the reference ``estargz.Build``; returns toc_digest and diff_id."""
    return _run([str(binary), "build", str(tar), str(out), *(prioritized or [])])
