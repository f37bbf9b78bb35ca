"""`hotreads`: reading an image through `lazybuild mount` once its chunks are cached,
against reading the same tree from local disk.

Two workloads, each on its own image: one 500 MB file of random bytes (sequential
1 MiB reads) and 20,000 small files in nested directories (walk + lstat of every
entry). The lazybuild side is warmed first (one full pass on an earlier mount, kept until
the layer's whole image is written, as a mount that outlives its reads does), then
each repetition mounts afresh; before the first timed pass of either side the kernel's
page, dentry and inode caches are dropped, so both sides read from the same disk; a
second pass follows at once, with what the kernel cached in the first (for lazybuild,
the EROFS mount's pages and dentries: nothing reaches the filesystem process).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.convert import lazybuild_argv
from bench.infra import BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, ratio, seconds
from bench.timing import median, timed_run
from lazybuild.lazyfs.imagecache import IMAGE_CACHE_DIR
from lazybuild.lazyfs.whole_images import WHOLE_IMAGE_SUFFIX
from tests.support import imagebuild, procs
from tests.support.cache import cached_dir

BIG_SIZE = 500 * 1000 * 1000
BIG_NAME = "data/big.bin"
READ_BLOCK = 1 << 20
# 20 x 20 directories of 50 files: 20,000 files, 420 directories.
TOP_DIRS, SUB_DIRS, FILES_PER_DIR = 20, 20, 50
THROUGHPUT_GOAL = 0.55  # lazybuild / local, at least, on a fresh mount
SECOND_PASS_GOAL = 0.9  # lazybuild / local throughput, at least, read again
METADATA_GOAL = 1.1  # lazybuild time / local time, at most
MOUNT_TIMEOUT = 300.0


# --- the trees, built once into the shared test cache --------------------------------


def _build_big(scratch: Path) -> None:
    target = scratch / BIG_NAME
    target.parent.mkdir(parents=True)
    with target.open("wb") as out:
        left = BIG_SIZE
        while left:
            block = os.urandom(min(left, 8 * READ_BLOCK))
            out.write(block)
            left -= len(block)


def _build_small(scratch: Path) -> None:
    for top in range(TOP_DIRS):
        for sub in range(SUB_DIRS):
            directory = scratch / "tree" / f"d{top:02d}" / f"s{sub:02d}"
            directory.mkdir(parents=True)
            for n in range(FILES_PER_DIR):
                (directory / f"f{n:02d}.txt").write_text(f"file {top}/{sub}/{n}\n" * 4)


def _layout(name: str, tree: Path) -> Path:
    def build(scratch: Path) -> None:
        imagebuild.image_from_dirs(scratch, [tree])
        shutil.rmtree(scratch / "blobs" / ".staging", ignore_errors=True)

    return cached_dir(f"bench-hotreads-{name}-oci-v1", build)


def _pushed_estargz(infra: BenchInfra, name: str, tree: Path) -> str:
    host = infra.registry.host
    imagebuild.push_oci_layout(_layout(name, tree), host, f"bench/hotreads-{name}", "gzip")
    src = f"{host}/bench/hotreads-{name}:gzip"
    dst = f"{host}/bench/hotreads-{name}:estargz"
    with tempfile.TemporaryDirectory(dir=infra.workdir) as scratch:
        env = {"XDG_CACHE_HOME": f"{scratch}/cache", "DOCKER_CONFIG": f"{scratch}/docker"}
        done = timed_run(lazybuild_argv("convert", "--tmpdir", scratch, src, dst), env=env)
    if not done.ok:
        raise RuntimeError(f"converting {src} failed: {done.failure()}")
    return dst


# --- mounting and measuring -------------------------------------------------------------


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


@contextlib.contextmanager
def lazybuild_mount(state: Path, image: str, target: Path) -> Iterator[None]:
    """`lazybuild mount` in the background until the block ends; always unmounted."""
    target.mkdir(parents=True, exist_ok=True)
    log = (state / f"{target.name}.mount.log").open("w")
    process = subprocess.Popen(
        lazybuild_argv("--state-dir", str(state), "mount", image, str(target)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not _mounted(target):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`lazybuild mount {image}` did not come up: see {log.name}")
            time.sleep(0.05)
        yield
    finally:
        if _mounted(target):
            subprocess.run(
                lazybuild_argv("--state-dir", str(state), "umount", str(target)),
                capture_output=True,
                check=False,
            )
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if _mounted(target):
            procs.unmount_all_under(target.parent)
            procs.unmount_all_under(target)


def _wait_for_whole_image(state: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not any((state / IMAGE_CACHE_DIR).glob(f"*{WHOLE_IMAGE_SUFFIX}")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no whole layer image in {state} after {timeout:g} s")
        time.sleep(0.2)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_file(path: Path) -> int:
    """Read `path` sequentially in 1 MiB reads; the byte count."""
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    total = 0
    with path.open("rb", buffering=0) as data:
        while count := data.readinto(view):
            total += count
    return total


def walk_tree(root: Path) -> int:
    """os.walk + lstat of every entry (what `find -printf ''` plus a stat does); the count."""
    count = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lstat(os.path.join(directory, name))
            count += 1
    return count


@dataclass
class Measured:
    label: str
    times: list[float] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)

    def timed(self, action: Callable[[], int], *, cold: bool = True) -> None:
        if cold:
            drop_caches()
        started = time.monotonic()
        amount = action()
        self.times.append(time.monotonic() - started)
        self.amounts.append(amount)

    @property
    def time(self) -> float | None:
        return median(self.times)

    @property
    def amount(self) -> int:
        if len(set(self.amounts)) != 1:
            raise RuntimeError(f"{self.label}: passes saw different amounts {self.amounts}")
        return self.amounts[0]


def _measure(
    infra: BenchInfra,
    image: str,
    *,
    relative: str,
    local: Path,
    action: Callable[[Path], int],
    repeat: int,
    name: str,
) -> tuple[Measured, Measured, Measured, Measured, int]:
    """Warm lazybuild's cache, then interleave fresh-mount passes with local passes,
    each followed by a second pass. Returns (lazybuild, local, lazybuild again, local
    again, what the warming pass saw), the last to check both sides see the same tree."""
    state = Path(tempfile.mkdtemp(prefix=f"hotreads-{name}-", dir=infra.workdir))
    lazy = Measured("lazybuild mount (warm chunk cache, fresh mount)")
    disk = Measured("local disk")
    lazy_again = Measured("lazybuild mount, second pass (same mount)")
    disk_again = Measured("local disk, second pass")
    targets = state / "targets"
    try:
        with lazybuild_mount(state, image, targets / "warm"):
            warmed = action(targets / "warm" / relative)
            # The steady state: once every chunk is cached, the filesystem process
            # keeps the layer's whole image, which later mounts use.
            _wait_for_whole_image(state)
        for n in range(repeat):
            target = targets / f"pass{n}"
            with lazybuild_mount(state, image, target):
                lazy.timed(functools.partial(action, target / relative))
                lazy_again.timed(functools.partial(action, target / relative), cold=False)
            disk.timed(functools.partial(action, local))
            disk_again.timed(functools.partial(action, local), cold=False)
    finally:
        procs.unmount_all_under(targets)
        subprocess.run(
            lazybuild_argv("--state-dir", str(state), "prune"), capture_output=True, check=False
        )
        procs.unmount_all_under(state)
    return lazy, disk, lazy_again, disk_again, warmed


def _goal(label: str, value: float | None, goal: float, *, at_least: bool) -> str:
    bound = "≥" if at_least else "≤"
    if value is None:
        return f"{label} goal ({bound} {goal}): not measured."
    met = value >= goal if at_least else value <= goal
    return f"{label} goal ({bound} {goal}): **{'met' if met else 'missed'}** ({value:.2f})."


def run(infra: BenchInfra, repeat: int = 3, *, wan: bool = True) -> Section:
    del wan  # local reads only: the registry is on loopback and only used for warming
    load_before = os.getloadavg()[0]
    big_tree = cached_dir("bench-hotreads-big-v1", _build_big)
    small_tree = cached_dir("bench-hotreads-small-v1", _build_small)
    big_image = _pushed_estargz(infra, "big", big_tree)
    small_image = _pushed_estargz(infra, "small", small_tree)

    big_lazy, big_disk, big_lazy_again, big_disk_again, big_warm = _measure(
        infra,
        big_image,
        relative=BIG_NAME,
        local=big_tree / BIG_NAME,
        action=read_file,
        repeat=repeat,
        name="big",
    )
    small_lazy, small_disk, small_lazy_again, small_disk_again, small_warm = _measure(
        infra,
        small_image,
        relative="tree",
        local=small_tree / "tree",
        action=walk_tree,
        repeat=repeat,
        name="small",
    )
    # Speed means nothing if the mount shows something else than the local copy.
    for what, seen in (
        ("bytes read", [big_warm, big_lazy.amount, big_disk.amount, big_lazy_again.amount]),
        ("entries walked", [small_warm, small_lazy.amount, small_disk.amount]),
    ):
        if len(set(seen)) != 1:
            raise RuntimeError(f"{what} (warm pass, lazybuild, local) differ: {seen}")

    def mb_per_s(measured: Measured) -> float | None:
        return measured.amount / 1e6 / measured.time if measured.time else None

    def throughput_ratio(lazy: Measured, disk: Measured) -> float | None:
        return disk.time / lazy.time if lazy.time and disk.time is not None else None

    big_ratio = throughput_ratio(big_lazy, big_disk)
    again_ratio = throughput_ratio(big_lazy_again, big_disk_again)
    small_ratio = (
        small_lazy.time / small_disk.time
        if small_lazy.time is not None and small_disk.time
        else None
    )
    rows = [["workload", "where", f"time (median of {repeat})", "rate", "ratio lazybuild / local"]]
    for measured, against in (
        (big_lazy, big_disk),
        (big_disk, None),
        (big_lazy_again, big_disk_again),
        (big_disk_again, None),
    ):
        rate = mb_per_s(measured)
        rows.append(
            [
                f"sequential read, {BIG_SIZE / 1e6:.0f} MB file, 1 MiB reads",
                measured.label,
                f"{measured.time:.2f} s" if measured.time is not None else seconds(None),
                f"{rate:.0f} MB/s" if rate is not None else "n/a",
                ratio(rate, mb_per_s(against)) + " (throughput)" if against else "",
            ]
        )
    for measured, against in (
        (small_lazy, small_disk),
        (small_disk, None),
        (small_lazy_again, small_disk_again),
        (small_disk_again, None),
    ):
        rows.append(
            [
                f"os.walk + lstat, {small_disk.amount:,} entries",
                measured.label,
                f"{measured.time:.2f} s" if measured.time is not None else seconds(None),
                f"{measured.amount / measured.time:,.0f} entries/s" if measured.time else "n/a",
                ratio(measured.time, against.time) + " (time)" if against else "",
            ]
        )
    notes = [
        _goal(
            "Sequential read throughput lazybuild / local, fresh mount",
            big_ratio,
            THROUGHPUT_GOAL,
            at_least=True,
        ),
        _goal(
            "Sequential read throughput lazybuild / local, second pass",
            again_ratio,
            SECOND_PASS_GOAL,
            at_least=True,
        ),
        _goal("Metadata walk time lazybuild / local", small_ratio, METADATA_GOAL, at_least=False),
        "Each first pass (both sides) starts right after `sync; echo 3 > "
        "/proc/sys/vm/drop_caches`, so the local file, the local tree and lazybuild's chunk "
        "cache are all read from disk, and dentries/inodes are not cached; the second pass "
        "follows at once, with whatever the kernel kept. Per-pass times (first passes): "
        f"read lazybuild {_list(big_lazy.times)}, local {_list(big_disk.times)}; "
        f"walk lazybuild {_list(small_lazy.times)}, local {_list(small_disk.times)}.",
        "This is a VM: dropping the guest's caches does not drop the host's, so 'disk' "
        "reads may be served from the host's page cache; that favours neither side "
        "(both read files of the same filesystem) but makes the local figures faster "
        "than a bare disk would be.",
    ]
    setup = describe(
        {"lazybuild": lazybuild_argv("--version"), "registry": ["docker-registry", "--version"]}
    )
    setup += [
        load_line(load_before),
        f"- Images (one layer each, gzip pushed to docker-registry on 127.0.0.1, converted "
        f"with `lazybuild convert`): `/{BIG_NAME}`, {BIG_SIZE / 1e6:.0f} MB of random bytes; "
        f"`/tree`, {TOP_DIRS * SUB_DIRS * FILES_PER_DIR:,} files of ~80 bytes in "
        f"{TOP_DIRS} x {SUB_DIRS} nested directories",
        "- lazybuild: `lazybuild --state-dir S mount IMAGE DIR`; one full pass on a first "
        "mount fills S's chunk cache, then each repetition is a fresh mount of the same "
        "state dir (kernel caches of the layer empty) with a timed pass, then a second",
        "- local: the same file and tree, on the same disk (virtio block device, "
        "the filesystem of /) as the state dir",
        "- Read: Python `readinto` of 1 MiB blocks, unbuffered; walk: `os.walk` + `os.lstat` "
        "of every entry, like `find DIR -printf ''` plus a stat",
        "- Repetitions interleave lazybuild and local passes; figures are medians.",
    ]
    return Section(
        name="hotreads",
        title="hotreads: cached reads through lazybuild mount vs local disk",
        setup=setup,
        table=rows,
        notes=notes,
    )


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " s"
