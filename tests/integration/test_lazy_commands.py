"""`lazybuild mount`, `umount` and `run` against a real registry, FUSE, overlayfs, runc.

The issue's acceptance checks, at the level a user sees them: mounted trees equal the
unpacked image, a 1 MB read costs about 1 MB on the wire, a second mount reads from
the cache, `run` passes exit codes through and fetches a fraction of the image, and a
killed filesystem process leaves nothing behind once the next command has run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from lazybuild.executor.runc import STOP_GRACE_SECONDS
from lazybuild.lazyfs.client import STOP_TIMEOUT
from tests.support.containerd import Containerd
from tests.support.imagebuild import (
    cached_rootfs_image,
    image_from_dirs,
    push_oci_layout,
)
from tests.support.images import read_layout_image
from tests.support.registry import Registry
from tests.support.trees import directory_tree, flatten, layer_tree
from tests.support.wanproxy import WanProxy

pytestmark = pytest.mark.root

MOUNT_TIMEOUT = 120.0


def lazybuild_argv(state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lazybuild", "--state-dir", str(state_dir), *args]


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [
            line.split()[4] for line in mountinfo if line.split()[4].startswith(str(path) + "/")
        ]


@contextmanager
def lazybuild_mount(
    state_dir: Path, image: str, target: Path, *options: str
) -> Iterator[subprocess.Popen[str]]:
    target.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        lazybuild_argv(state_dir, "mount", *options, image, str(target)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not mounted(target):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"mount did not come up: {process.communicate()[1]}")
            time.sleep(0.1)
        yield process
    finally:
        if mounted(target):
            subprocess.run(lazybuild_argv(state_dir, "umount", str(target)), check=False)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def convert(source: str, destination: str) -> None:
    assert main(["-q", "convert", source, destination]) == 0


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("state")
    yield root
    subprocess.run(lazybuild_argv(root, "prune"), check=False, capture_output=True)
    assert mounts_under(root) == []


def _expected_tree(layout: Path) -> dict[str, object]:
    original = read_layout_image(layout)
    merged = flatten(layer_tree(original.blob(d["digest"])) for d in original.layers)
    return {path: facts for path, facts in merged.items() if path}


@pytest.mark.parametrize("converter", ["lazybuild", "ctr-remote"])
def test_mounted_tree_equals_the_unpacked_image(
    converter: str,
    rich_image: str,
    rich_image_layout: Path,
    registry: Registry,
    containerd: Containerd,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    reference = f"{registry.host}/test/rich:mount-{converter}"
    if converter == "lazybuild":
        convert(rich_image, reference)
    else:
        containerd.convert_to_estargz(rich_image, reference)
    with lazybuild_mount(state_dir, reference, tmp_path / "mnt"):
        tree = directory_tree(tmp_path / "mnt")
    assert tree.entries == _expected_tree(rich_image_layout)
    assert frozenset({"srv/big.bin", "srv/big-hardlink.bin"}) in tree.hardlinks


@pytest.fixture(scope="module")
def big_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One 110 MB eStargz layer of incompressible files, among them /data/wanted.bin (1 MB)."""
    tree = tmp_path_factory.mktemp("big") / "tree"
    data = tree / "data"
    data.mkdir(parents=True)
    generator = random.Random(3)
    for number in range(110):
        (data / f"filler-{number:03}.bin").write_bytes(generator.randbytes(1 << 20))
    (data / "wanted.bin").write_bytes(generator.randbytes(1 << 20))
    layout = tmp_path_factory.mktemp("big-layout") / "layout"
    image_from_dirs(layout, [tree])
    push_oci_layout(layout, registry.host, "test/big", "gzip")
    reference = f"{registry.host}/test/big:esgz"
    convert(f"{registry.host}/test/big:gzip", reference)
    return "test/big:esgz"


def test_one_file_costs_its_size_on_the_wire_and_nothing_when_cached(
    big_image: str,
    registry: Registry,
    wan_proxy: Callable[..., WanProxy],
    state_dir: Path,
    tmp_path: Path,
) -> None:
    proxy = wan_proxy(registry.host, latency=0.0, bandwidth_bits=None)
    reference = f"{proxy.host}/{big_image}"
    target = tmp_path / "mnt"
    with lazybuild_mount(state_dir, reference, target):
        metadata_bytes = proxy.bytes_to_client  # manifest, config, footer and TOC
        proxy.reset_counters()
        assert len((target / "data" / "wanted.bin").read_bytes()) == 1 << 20
        first_read = proxy.bytes_to_client
    assert first_read < 2 * (1 << 20), f"{first_read} bytes on the wire for a 1 MB file"
    assert metadata_bytes < 1 << 20

    with lazybuild_mount(state_dir, reference, target):
        proxy.reset_counters()
        assert len((target / "data" / "wanted.bin").read_bytes()) == 1 << 20
        second_read = proxy.bytes_to_client
    assert second_read == 0


@pytest.fixture(scope="module")
def python_image(registry: Registry, python_rootfs: Path) -> str:
    layout = cached_rootfs_image(python_rootfs)
    push_oci_layout(layout, registry.host, "test/python", "gzip")
    reference = f"{registry.host}/test/python:esgz"
    convert(f"{registry.host}/test/python:gzip", reference)
    return reference


def test_run_python_hello_fetches_a_fraction(
    python_image: str, state_dir: Path, tmp_path: Path
) -> None:
    fresh_state = tmp_path / "state"  # a cold cache: everything read is fetched
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        lazybuild_argv(
            fresh_state,
            "run",
            "--fetch-report",
            str(report_path),
            python_image,
            "python3",
            "-c",
            'print("hello")',
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    report = json.loads(report_path.read_text())
    assert report["bytes_fetched"] < 0.2 * report["size"], report
    assert all(layer["mode"] == "lazy" for layer in report["layers"])
    subprocess.run(lazybuild_argv(fresh_state, "prune"), check=False, capture_output=True)


def test_run_passes_exit_codes_and_options_through(python_image: str, state_dir: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            lazybuild_argv(state_dir, "-q", "run", *args),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert run(python_image, "sh", "-c", "exit 7").returncode == 7
    missing = run(python_image, "no-such-program")
    assert missing.returncode == 127  # as a shell and `docker run` report it
    assert "lazybuild: error: " in missing.stderr and "no-such-program" in missing.stderr
    shown = run(
        "--env",
        "GREETING=hi",
        "--workdir",
        "/tmp",
        "--user",
        "nobody",
        "--network",
        "none",
        python_image,
        "sh",
        "-c",
        'echo "$GREETING $(pwd) $(id -u)"; cat /proc/net/dev | wc -l',
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["hi /tmp 65534", "3"]  # header lines + lo only


def test_killed_filesystem_process_is_cleaned_up_by_the_next_command(
    python_image: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    target = tmp_path / "mnt"
    with lazybuild_mount(state, python_image, target) as mount_command:
        _, service_pid = _filesystem_of(state)
        os.kill(mount_command.pid, signal.SIGKILL)
        os.kill(service_pid, signal.SIGKILL)
        mount_command.wait()
        assert mounts_under(state) or mounted(target)
        du = subprocess.run(
            lazybuild_argv(state, "du"), capture_output=True, text=True, check=False
        )
        assert du.returncode == 0, du.stderr
        assert mounts_under(state) == []
        assert not mounted(target)
        assert list((state / "mounts").glob("*.json")) == []


def test_mount_stops_cleanly_when_its_filesystem_process_dies(
    python_image: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    target = tmp_path / "mnt"
    with lazybuild_mount(state, python_image, target) as mount_command:
        (record,) = (state / "mounts").glob("*.json")
        os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
        _, stderr = mount_command.communicate(timeout=60)
    assert mount_command.returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("lazybuild: error:")]
    assert len(errors) == 1 and "stopped" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not mounted(target)
    assert mounts_under(state) == []


def test_writable_mount_keeps_changes_in_the_upper_dir(
    python_image: str, state_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "mnt"
    upper = tmp_path / "upper"
    with lazybuild_mount(state_dir, python_image, target, "--upper", str(upper)):
        (target / "etc" / "written-by-test").write_text("kept\n")
        (target / "etc" / "debian_version").unlink()
        assert not os.access(target / "etc" / "debian_version", os.F_OK)
    assert (upper / "etc" / "written-by-test").read_text() == "kept\n"
    whiteout = os.lstat(upper / "etc" / "debian_version")
    assert (os.major(whiteout.st_rdev), os.minor(whiteout.st_rdev)) == (0, 0)
    assert not mounted(target)


def test_read_only_mount_refuses_writes(python_image: str, state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    with lazybuild_mount(state_dir, python_image, target):
        with pytest.raises(OSError) as refused:
            (target / "etc" / "new-file").write_text("x")
        assert refused.value.errno == errno.EROFS


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_mount_unmounts_everything(
    python_image: str, tmp_path: Path, signal_number: int
) -> None:
    state = tmp_path / "state"
    target = tmp_path / "mnt"
    with lazybuild_mount(state, python_image, target) as mount_command:
        mount_command.send_signal(signal_number)
        _, stderr = mount_command.communicate(timeout=60)
    assert mount_command.returncode == 0, stderr
    assert "fetch report" in stderr
    assert not mounted(target)
    assert mounts_under(state) == []
    assert list((state / "mounts").glob("*.json")) == []


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0])
def test_terminated_while_mounting_leaves_nothing_behind(
    python_image: str, tmp_path: Path, delay: float
) -> None:
    state = tmp_path / "state"
    target = tmp_path / "mnt"
    target.mkdir()
    process = subprocess.Popen(
        lazybuild_argv(state, "mount", python_image, str(target)),
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    # A filesystem process that was still starting is stopped, not left to the kill timeout.
    assert time.monotonic() - signalled < STOP_TIMEOUT, stderr
    # Whether the signal came before or after the mount was up, it ends cleanly (or, while
    # Python is still importing, before lazybuild handles signals, by the signal itself).
    assert process.returncode in (0, 130, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    assert not mounted(target)
    assert mounts_under(state) == []
    assert list((state / "mounts").glob("*.json")) == []


@contextmanager
def _sleeping_run(state: Path, image: str, tag: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``lazybuild run IMAGE sleep N``, once its container runs; ``sleep N`` (N from
    ``tag`` and our pid) names this test's container process. Killed on the way out if
    the test did not end it."""
    marker = f"sleep {tag + os.getpid() % 1000}"
    process = subprocess.Popen(
        lazybuild_argv(state, "run", image, *marker.split()), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while subprocess.run(["pgrep", "-x", "-f", marker], check=False).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr
            time.sleep(0.1)
        yield process, marker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _filesystem_of(state: Path) -> tuple[Path, int]:
    """The mount record of the one filesystem process of ``state``, and its pid."""
    (record,) = (state / "mounts").glob("*.json")
    return record, json.loads(record.read_text())["pid"]


def test_interrupted_run_stops_the_container_and_unmounts(
    python_image: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with _sleeping_run(state, python_image, 600) as (process, marker):
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    # `sleep` as PID 1 ignores SIGINT, so it is killed after the grace period.
    assert process.returncode == 128 + signal.SIGKILL, stderr
    assert time.monotonic() - interrupted < STOP_GRACE_SECONDS + 10
    assert "Traceback" not in stderr
    assert mounts_under(state) == []
    assert subprocess.run(["pgrep", "-x", "-f", marker], check=False).returncode == 1


def test_run_forks_its_filesystem_which_other_commands_leave_alone(
    python_image: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with _sleeping_run(state, python_image, 1600) as (process, marker):
        record, service_pid = _filesystem_of(state)
        # Forked from the CLI (not a new interpreter), and named so that it is known.
        status = Path(f"/proc/{service_pid}/stat").read_text()
        assert status.rpartition(")")[2].split()[1] == str(process.pid)
        assert Path(f"/proc/{service_pid}/comm").read_text().strip() == "lazybuild-fs"
        # SIGPIPE ignored, as in any Python process: a write to a client that went away
        # must not kill the filesystem.
        ignored = next(
            line.split()[1]
            for line in Path(f"/proc/{service_pid}/status").read_text().splitlines()
            if line.startswith("SigIgn:")
        )
        assert int(ignored, 16) & (1 << (signal.SIGPIPE - 1))
        # Another command's clean-up takes it for what it is: a live filesystem.
        du = subprocess.run(
            lazybuild_argv(state, "du"), capture_output=True, text=True, check=False
        )
        assert du.returncode == 0, du.stderr
        assert record.exists() and mounts_under(state)
        assert subprocess.run(["pgrep", "-x", "-f", marker], check=False).returncode == 0
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert mounts_under(state) == []
    assert list((state / "mounts").glob("*.json")) == []
    assert not Path(f"/proc/{service_pid}").exists()


def test_a_killed_run_leaves_its_forked_filesystem_to_the_next_command(
    python_image: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with _sleeping_run(state, python_image, 2600) as (process, marker):
        _, service_pid = _filesystem_of(state)
        process.kill()  # SIGKILL: no finally runs in the CLI
        process.wait()
    # The filesystem notices that its owner is gone and stops; the next command
    # takes down what is left (the container, the overlay) and the records.
    deadline = time.monotonic() + STOP_TIMEOUT + 10
    while Path(f"/proc/{service_pid}").exists() and "Z" not in _state_of(service_pid):
        assert time.monotonic() < deadline, "the forked filesystem outlived its owner"
        time.sleep(0.1)
    du = subprocess.run(lazybuild_argv(state, "du"), capture_output=True, text=True, check=False)
    assert du.returncode == 0, du.stderr
    assert mounts_under(state) == []
    assert list((state / "mounts").glob("*.json")) == []
    assert subprocess.run(["pgrep", "-x", "-f", marker], check=False).returncode == 1


def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_du_and_prune(python_image: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ran = subprocess.run(
        lazybuild_argv(state, "-q", "run", python_image, "true"), check=False, timeout=300
    )
    assert ran.returncode == 0

    def du() -> str:
        shown = subprocess.run(
            lazybuild_argv(state, "du"), capture_output=True, text=True, check=True
        )
        return shown.stdout

    before = du()
    chunks_before = int(before.split("chunk cache")[1].split()[0])
    assert chunks_before > 0
    pruned = subprocess.run(
        lazybuild_argv(state, "prune"), capture_output=True, text=True, check=True
    )
    assert f"freed {chunks_before} chunks" in pruned.stdout
    assert int(du().split("chunk cache")[1].split()[0]) == 0
