"""SIGKILL at random points: the next command succeeds and nothing survives.

A seeded loop kills ``lazybuild build`` (a COPY and a RUN on the e2e base image, exported
to an OCI tarball), ``lazybuild run`` and the filesystem process either of them forks
(``lazybuild-fs``), each after a delay drawn from a range covering start-up, base
resolution, the RUN step and the export. After each kill the next command (a cheap
``run``) must succeed, and then no mount under the state dir, loop device, runc
container, filesystem process, staging area, unpack ``.partial-*`` directory or temp
file may be left. At the end every chunk-cache entry verifies (its sha256 is its name),
the build's SQLite cache passes ``PRAGMA integrity_check``, every committed layer is a
whole directory and every exported blob matches its sidecar.

``LAZYBUILD_CRASH_SEED`` picks another seed (printed either way);
``LAZYBUILD_CRASH_KILLS`` the number of kill points that must land before their command
ends (at least 20; more are drawn while some come too late).

Secrets: a build that mounts a secret leaves its bytes in no file under the state dir,
neither when it finishes nor when it is SIGKILLed while the step runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.cli.main import main
from lazybuild.lazyfs.stale import SERVICE_NAME
from tests.e2e.buildsupport import (
    assert_nothing_left,
    filesystem_processes,
    lazybuild,
    runc_containers,
    write_context,
)
from tests.support.procs import mounts_under, unmount_all_under
from tests.support.registry import Registry

pytestmark = pytest.mark.root

SEED = int(os.environ.get("LAZYBUILD_CRASH_SEED", "1313"))
KILLS = max(20, int(os.environ.get("LAZYBUILD_CRASH_KILLS", "20")))
# Kill points that come too late (the command had finished) do not count: more are drawn.
MAX_ATTEMPTS = 2 * KILLS
# How long a killed command may take to notice its filesystem died and exit.
EXIT_TIMEOUT = 60.0

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY stamp.txt /stamp.txt
RUN cat /stamp.txt /etc/os-release > /made.txt && ls /usr/bin > /listing.txt
"""

SECRET_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY stamp.txt /stamp.txt
RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && {pause}echo used
RUN --mount=type=secret,id=token,env=TOKEN test -n "$TOKEN" && echo env
"""


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/crash/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    root.mkdir()
    try:
        yield root
    finally:
        unmount_all_under(root)


def lazybuild_argv(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lazybuild", "--state-dir", str(state), *args]


def build_argv(state: Path, base: str, context: Path, out: Path, *extra: str) -> list[str]:
    return lazybuild_argv(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base}",
        "-o",
        f"type=oci,dest={out}",
        *extra,
        str(context),
    )


def run_argv(state: Path, base: str) -> list[str]:
    return lazybuild_argv(
        state, "run", base, "sh", "-c", "cat /etc/os-release /usr/bin/ls > /dev/null; sleep 0.3"
    )


def forked_filesystem(parent: int) -> int | None:
    """The ``lazybuild-fs`` child of ``parent``, once it has named itself."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and name == SERVICE_NAME:
            return int(entry.name)
    return None


@dataclass
class KillPoint:
    index: int
    command: str  # build | run
    victim: str  # cli | fs
    delay: float
    killed: bool = False
    exit_code: int | None = None
    error: str = ""

    def __str__(self) -> str:
        what = "killed" if self.killed else "missed (it had finished)"
        return (
            f"#{self.index:02d} {self.command:5} {self.victim:3} after {self.delay:5.2f}s: "
            f"{what}, exit {self.exit_code} {self.error}"
        )


def kill_at(point: KillPoint, argv: list[str]) -> KillPoint:
    """Start ``argv``; SIGKILL the CLI (or its forked filesystem process, timed from its
    appearance) after ``point.delay``; wait for the CLI to end."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        victim = process.pid
        if point.victim == "fs":
            while (found := forked_filesystem(process.pid)) is None:
                if process.poll() is not None or time.monotonic() - started > EXIT_TIMEOUT:
                    break
                time.sleep(0.01)
            victim = found or 0
            started = time.monotonic()
        while time.monotonic() - started < point.delay and process.poll() is None:
            time.sleep(0.005)
        if victim and process.poll() is None:
            try:
                os.kill(victim, signal.SIGKILL)
                point.killed = True
            except ProcessLookupError:
                pass
        try:
            _, stderr = process.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            raise AssertionError(f"{point}: the command hung after the kill:\n{stderr}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    point.exit_code = process.returncode
    lines = [line for line in stderr.splitlines() if line.startswith("lazybuild: error")]
    point.error = lines[-1] if lines else ""
    if point.killed and point.victim == "fs":
        # The CLI outlived its filesystem: it must say so in one line, not a traceback.
        assert "Traceback" not in stderr, f"{point}:\n{stderr}"
        assert "Exceptions from Trio" not in point.error, f"{point}:\n{stderr}"
        assert "spawn() first" not in point.error, f"{point}:\n{stderr}"
    return point


def leftovers(state: Path) -> list[str]:
    """What killed runs may leave that the next command must have removed."""
    found = [f"mount {path}" for path in mounts_under(state) if path != state.resolve()]
    found += [f"container {name}" for name in runc_containers(state)]
    found += [f"process {line}" for line in filesystem_processes(state)]
    found += [f"loop device {line}" for line in loop_devices(state)]
    staging = state / "build" / "staging"
    if staging.is_dir():
        found += [f"staging {path.name}" for path in staging.iterdir()]
    for directory, subdirectories, files in os.walk(state):  # unreadable mounts skipped
        for name in subdirectories + files:
            if name.startswith(".partial-") or name.endswith(".tmp"):
                found.append(f"temp {Path(directory, name).relative_to(state)}")
    return found


def loop_devices(state: Path) -> list[str]:
    listing = subprocess.run(
        ["losetup", "--list", "--json"], capture_output=True, text=True, check=False
    )
    devices = json.loads(listing.stdout or "{}").get("loopdevices", [])
    root = str(state.resolve())
    return [
        f"{device.get('name')} {device.get('back-file')}"
        for device in devices
        if str(device.get("back-file") or "").startswith(root)
    ]


def assert_cache_consistent(state: Path) -> None:
    chunks = state / "cache" / "chunks" / "sha256"
    cache = ChunkCache(state / "cache")
    entries = [path for path in chunks.glob("*/*")] if chunks.is_dir() else []
    for path in entries:
        data = cache.get(f"sha256:{path.name}")
        assert data is not None, f"chunk cache entry {path} does not verify"
        assert hashlib.sha256(data).hexdigest() == path.name, f"{path}: wrong content"
    database = state / "build" / "cache.db"
    if database.exists():
        with sqlite3.connect(database) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    layers = state / "build" / "layers"
    for layer in layers.iterdir() if layers.is_dir() else []:
        assert layer.is_dir() and not layer.is_symlink(), f"layer {layer} is not a directory"
    blobs = state / "build" / "blobs"
    for sidecar in blobs.glob("*.json") if blobs.is_dir() else []:
        record = json.loads(sidecar.read_text())
        blob = sidecar.with_suffix(".esgz")
        if not blob.exists():
            continue  # written again when needed
        descriptor = record.get("descriptor") or {}
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        assert descriptor.get("digest") in (None, f"sha256:{digest}"), f"{blob} is damaged"


def test_sigkill_at_random_points_leaves_nothing_behind(
    base_image: str, state: Path, tmp_path: Path
) -> None:
    print(f"crash-safety seed: {SEED} (LAZYBUILD_CRASH_SEED), {KILLS} kill points to land")
    rng = random.Random(SEED)
    out = tmp_path / "out.tar"
    context = write_context(tmp_path / "context", DOCKERFILE, {"stamp.txt": "warm-up\n"})
    # One build and one run uninterrupted: they set the delay ranges (and warm the
    # chunk cache, so later kills land in every phase, not only in the first fetches).
    timings = {}
    for attempt in ("cold", "warm"):  # the warm times set the ranges
        (context / "stamp.txt").write_text(f"{attempt}\n")
        for command, argv in (
            ("build", build_argv(state, base_image, context, out)),
            ("run", run_argv(state, base_image)),
        ):
            started = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
            timings[command] = time.monotonic() - started
    print(f"uninterrupted: build {timings['build']:.2f}s, run {timings['run']:.2f}s")
    points: list[KillPoint] = []
    for index in range(MAX_ATTEMPTS):
        if sum(point.killed for point in points) >= KILLS:
            break
        command = rng.choice(("build", "run"))
        victim = rng.choice(("cli", "fs"))
        # The filesystem process appears ~0.1 s after the CLI: its range is shorter.
        delay = rng.uniform(0.0, timings[command] * (0.95 if victim == "cli" else 0.85))
        point = KillPoint(index, command, victim, round(delay, 3))
        if command == "build":
            # A new stamp each time: the COPY and the RUN run again, and so does the export.
            (context / "stamp.txt").write_text(f"kill point {index} seed {SEED}\n")
            argv = build_argv(state, base_image, context, out)
        else:
            argv = run_argv(state, base_image)
        kill_at(point, argv)
        points.append(point)
        print(point, flush=True)
        after = subprocess.run(
            lazybuild_argv(state, "run", base_image, "true"),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert after.returncode == 0, f"{point}: the next command failed:\n{after.stderr}"
        left = leftovers(state)
        assert left == [], f"{point}: left behind after the next command: {left}"
    assert sum(point.killed for point in points) >= KILLS, "too few kills landed in time"
    # A build after all of that works, and from the cache where it can.
    (context / "stamp.txt").write_text("after the kills\n")
    lazybuild(state, "build", "--build-arg", f"BASE={base_image}", str(context))
    assert_nothing_left(state)
    assert leftovers(state) == []
    assert_cache_consistent(state)


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Files on ``root``'s own filesystem (not on mounts below it) that hold ``needle``."""
    device = root.stat().st_dev
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [
            name for name in subdirectories if (Path(directory) / name).lstat().st_dev == device
        ]
        for name in files:
            path = Path(directory) / name
            try:
                if path.lstat().st_dev == device and path.is_file() and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def secret_tmpfs_mounts(state: Path) -> list[Path]:
    return [path for path in mounts_under(state) if path.name == "secrets"]


def test_secrets_are_never_on_disk(base_image: str, state: Path, tmp_path: Path) -> None:
    secret = b"s3cr3t-" + os.urandom(12).hex().encode()
    secret_file = tmp_path / "token"
    secret_file.write_bytes(secret)
    context = write_context(
        tmp_path / "context", SECRET_DOCKERFILE.replace("{pause}", ""), {"stamp.txt": "one\n"}
    )
    secret_flag = ("--secret", f"id=token,src={secret_file}")
    out = tmp_path / "out.tar"
    lazybuild(state, *build_argv(state, base_image, context, out, *secret_flag)[5:])
    assert files_holding(state, secret) == []
    assert secret_tmpfs_mounts(state) == []

    # Killed while the step that reads the secret runs: the secret is on a tmpfs only,
    # and the next command takes that down.
    write_context(
        context, SECRET_DOCKERFILE.replace("{pause}", "sleep 60 && "), {"stamp.txt": "two\n"}
    )
    process = subprocess.Popen(
        build_argv(state, base_image, context, out, *secret_flag),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not runc_containers(state):  # the step that holds the secret runs
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the secret step did not start"
            time.sleep(0.05)
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert files_holding(state, secret) == []
    assert len(secret_tmpfs_mounts(state)) == 1  # in memory, until the next command
    lazybuild(state, "run", base_image, "true")
    assert secret_tmpfs_mounts(state) == []
    assert files_holding(state, secret) == []
    assert leftovers(state) == []
