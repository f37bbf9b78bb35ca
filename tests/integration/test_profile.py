"""Recording a workload's file accesses in runc, over a lazily mounted image.

Real parts only: the registry, the lazy filesystem (FUSE) serving eStargz layers,
overlayfs, runc and fanotify. The workload's own failures are outcomes, never errors.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import trio

from lazybuild.cli.main import main
from lazybuild.oci import mediatypes
from lazybuild.profile.fanotify import AccessLog, FilesystemWatch
from lazybuild.profile.workload import WorkloadRecord, record_workload
from lazybuild.progress.lines import Progress
from lazybuild.registry.options import RegistryOptions
from lazybuild.run.imagemount import mounted_image
from tests.support.imagebuild import cached_rootfs_image, push_oci_layout
from tests.support.registry import Registry

pytestmark = pytest.mark.root

IMPORT_JSON = ("python3", "-c", "import json, email; print('hi')")


def python_estargz_image(registry: Registry, python_rootfs: Path) -> str:
    """The Debian + python3 image (3 layers) as eStargz in the session's registry, under
    the tag `test_lazy_commands` uses too: converted once per session, whoever is first."""
    reference = f"{registry.host}/test/python:esgz"
    head = httpx.head(
        f"{registry.url}/v2/test/python/manifests/esgz",
        headers={"Accept": mediatypes.MANIFEST_ACCEPT},
    )
    if head.status_code != 200:
        push_oci_layout(cached_rootfs_image(python_rootfs), registry.host, "test/python", "gzip")
        assert main(["-q", "convert", f"{registry.host}/test/python:gzip", reference]) == 0
    return reference


@pytest.fixture(scope="module")
def python_image(registry: Registry, python_rootfs: Path) -> str:
    return python_estargz_image(registry, python_rootfs)


def _record(
    image: str,
    state_dir: Path,
    command: Sequence[str],
    *,
    timeout: float = 30.0,
    ready: str | None = None,
    also_mount_mark: list[int] | None = None,
) -> WorkloadRecord:
    """Mount ``image`` lazily with an upper dir and record ``command`` on it."""
    workspace = state_dir / "work"
    rootfs, upper, work = (workspace / n for n in ("rootfs", "upper", "work"))
    for directory in (rootfs, upper, work):
        directory.mkdir(parents=True, exist_ok=True)

    async def run() -> WorkloadRecord:
        async with mounted_image(
            image,
            rootfs,
            state_dir=state_dir,
            registry=RegistryOptions(),
            progress=Progress(quiet=True),
            upper=upper,
            work=work,
            background_fetch=False,
        ) as mounted:
            modes = {layer.mode for layer in mounted.layers}
            assert modes == {"lazy"}, "the layers should be served by the lazy filesystem"
            watching = also_mount_mark is not None
            mount_mark = FilesystemWatch(rootfs, scope="mount") if watching else None
            try:
                return await record_workload(
                    rootfs,
                    mounted.config,
                    command=command,
                    timeout=timeout,
                    ready=re.compile(ready) if ready else None,
                    scratch_dir=workspace / "scratch",
                )
            finally:
                if mount_mark is not None and also_mount_mark is not None:
                    seen = AccessLog(rootfs)
                    seen.add(mount_mark.read_events())
                    also_mount_mark.append(len(seen.files))
                    mount_mark.close()

    return trio.run(run)


def test_a_filesystem_mark_sees_the_container_read_through_the_lazy_mount(
    python_image: str, tmp_path: Path
) -> None:
    mount_mark_saw: list[int] = []
    record = _record(python_image, tmp_path / "state", IMPORT_JSON, also_mount_mark=mount_mark_saw)
    assert record.outcome.kind == "exited" and record.outcome.exit_code == 0, record.outcome
    assert record.args == IMPORT_JSON
    files = list(record.files)
    # The program first (exec), then its loader and libraries, then the modules, in order.
    assert files[files.index("usr/bin/python3.11") + 1] == (
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    json_module = "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"
    email_module = "usr/lib/python3.11/email/__pycache__/__init__.cpython-311.pyc"
    assert files.index("usr/bin/python3.11") < files.index(json_module) < files.index(email_module)
    assert len(files) == len(set(files))
    assert not record.lost_events
    # runc clones the mount into the container's namespace: a mount mark on the host's
    # overlay sees nothing the workload does, which is why the superblock is marked.
    assert mount_mark_saw == [0]


def test_a_server_is_profiled_until_its_ready_line(python_image: str, tmp_path: Path) -> None:
    server = ("python3", "-u", "-m", "http.server", "8000", "--bind", "127.0.0.1")
    started = time.monotonic()
    record = _record(python_image, tmp_path / "state", server, timeout=60.0, ready=r"^Serving HTTP")
    elapsed = time.monotonic() - started
    assert record.outcome.kind == "ready", record.outcome
    assert record.outcome.seconds < 15.0
    assert elapsed < 30.0, "stopped at readiness, far before the 60 s timeout"
    assert "usr/lib/python3.11/http/__pycache__/server.cpython-311.pyc" in record.files


def test_a_crashing_workload_is_an_outcome_with_what_it_read(
    python_image: str, tmp_path: Path
) -> None:
    crash = ("python3", "-c", "import json; raise SystemExit(3)")
    record = _record(python_image, tmp_path / "state", crash)
    assert (record.outcome.kind, record.outcome.exit_code) == ("exited", 3)
    assert "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc" in record.files


def test_a_hanging_workload_is_stopped_at_the_timeout(python_image: str, tmp_path: Path) -> None:
    hang = ("python3", "-c", "import json, time; time.sleep(600)")
    started = time.monotonic()
    record = _record(python_image, tmp_path / "state", hang, timeout=2.0)
    assert record.outcome.kind == "timed-out", record.outcome
    assert 2.0 <= record.outcome.seconds < 10.0
    assert time.monotonic() - started < 40.0
    assert "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc" in record.files


def test_a_workload_that_cannot_start_is_an_outcome(python_image: str, tmp_path: Path) -> None:
    record = _record(python_image, tmp_path / "state", ("/no/such/program",))
    assert record.outcome.kind == "failed-to-start", record.outcome
    assert "/no/such/program" in record.outcome.reason
