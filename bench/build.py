"""`build`: cold build + push of multi-stage examples, lazybuild against docker and buildah.

Three examples, each running one step in a builder image and shipping only the result:
`examples/hello-c` (gcc builder; binary copied onto the slim C runtime image),
`examples/hello-go` (golang builder; static binary copied onto scratch) and
`examples/hello-py` (python3 builder; a `python3 -c` step importing json and hashlib
writes a JSON file, copied onto scratch). Each tool
builds each example from nothing and pushes the result to a new repository, all
through the emulated WAN link in front of the registry:

- lazybuild: `lazybuild build --push` on the eStargz versions of the base images (made
  by `lazybuild convert`, outside the timing), a new state dir per repetition; then,
  as a second row, the same build again in that state dir with its chunk cache
  deleted and `--no-cache` (learned prefetch: each RUN step fetches what it read the
  first time in large requests as it starts);
- docker: `DOCKER_BUILDKIT=0 docker build` (the legacy builder) + `docker push` on the
  plain gzip base images, with images and build cache removed between repetitions;
- buildah: `buildah bud` + `buildah push` on the gzip base images, new --root and
  --runroot per repetition.

Besides the time and the bytes on the wire, the section checks how close lazybuild's
fetching comes to the bytes the build needs: the compressed size of the files the
build step reads (traced with strace, running the same RUN command in a chroot of the
builder's root filesystem) and of the chunks lazybuild ended up caching.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.convert import TOC_ANNOTATION, lazybuild_argv
from bench.infra import LAYER_FORMAT_LINE, WAN_DESCRIPTION, BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, data_size, mebibytes, ratio, seconds, seconds_list, verdict
from bench.timing import Timed, median, timed_run
from lazybuild.estargz.index import ChunkRef, LayerIndex
from lazybuild.estargz.reader import parse_layer, tail_read_range
from lazybuild.lazyfs.elfdeps import elf_dependencies, is_elf
from tests.support import imagebuild, procs, rootfs
from tests.support.dockerd import DOCKER_CLI

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
TIME_GOAL = 0.4  # lazybuild / the faster peer, at most
FETCH_GOAL = 1.5  # bytes fetched / compressed size of what the build reads, at most
BUILDAH = "/usr/bin/buildah"
RUNC = "/usr/sbin/runc"
STEP_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Example:
    name: str  # directory under examples/
    builder: str  # BUILDER_PACKAGES key
    runtime: bool  # the Dockerfile takes a RUNTIME build arg (the slim C runtime image)
    expected: str  # what the built image prints, or the content of `check_path`
    # The Dockerfile's build step, replayed under strace to see which files it reads.
    workdir: str
    run: str
    env: dict[str, str] = field(default_factory=dict)
    copy_to: str = "/src"
    # A file of the built image to check instead of running it (an image with no program).
    check_path: str | None = None


# Packages on top of Debian bookworm minbase in each builder image.
BUILDER_PACKAGES = {
    "gcc": rootfs.GCC_PACKAGES,
    "golang": rootfs.GOLANG_PACKAGES,
    "python": rootfs.PYTHON_PACKAGES,
}


EXAMPLES = [
    Example(
        name="hello-c",
        builder="gcc",
        runtime=True,
        expected="hello from a C program built by lazybuild (x86_64)",
        workdir="/src",
        run="gcc -O2 -Wall -o hello hello.c",
    ),
    Example(
        name="hello-go",
        builder="golang",
        runtime=False,
        expected="hello from a Go program built by lazybuild (amd64)",
        workdir="/src",
        run="go build -o /out/hello .",
        env={
            "GOCACHE": "/tmp/gocache",
            "GOPATH": "/tmp/gopath",
            "GOPROXY": "off",
            "GOFLAGS": "-mod=mod",
            "CGO_ENABLED": "0",
        },
    ),
    Example(
        name="hello-py",
        builder="python",
        runtime=False,
        expected='{"message": "hello from a Python build step run by lazybuild", '
        '"sha256": "2e2e1035a0ff87f6e3a257342eff5d0b5968027c93e0d5b5bc516f355d5f7829"}',
        workdir="/src",
        run=(
            "python3 -c \"import hashlib, json; text = open('message.txt').read().strip(); "
            "digest = hashlib.sha256(text.encode()).hexdigest(); open('hello.json', 'w')"
            ".write(json.dumps({'message': text, 'sha256': digest}, sort_keys=True) + '\\n')\""
        ),
        check_path="/hello.json",
    ),
]


# --- measurements ---------------------------------------------------------------------


@dataclass
class Measured:
    """Repetitions of one tool on one example; the report uses medians."""

    label: str
    wall: list[float] = field(default_factory=list)  # build + push
    build: list[float] = field(default_factory=list)
    push: list[float] = field(default_factory=list)
    down: list[int] = field(default_factory=list)  # bytes the proxy delivered to the client
    up: list[int] = field(default_factory=list)  # bytes the proxy delivered to the registry
    fetched: list[int] = field(default_factory=list)  # lazybuild's fetch report
    requests: list[int] = field(default_factory=list)  # lazybuild's fetch report
    cached: list[int] = field(default_factory=list)  # compressed size of the cached chunks
    unread: list[int] = field(default_factory=list)  # ... of files the step did not open
    unread_files: list[tuple[str, int]] = field(default_factory=list)  # first repetition's
    reports: list[dict[str, object]] = field(default_factory=list)
    progress: list[str] = field(default_factory=list)  # lazybuild's plain progress output
    check: str | None = None
    warm: float | None = None  # lazybuild: --no-cache rebuild with the chunks cached
    warm_progress: str = ""
    failure: str | None = None

    def fail(self, message: str) -> None:
        self.failure = self.failure or message

    @property
    def wall_median(self) -> float | None:
        return median(self.wall) if self.failure is None and self.wall else None

    def int_median(self, values: list[int]) -> int | None:
        value = median(values)
        return None if value is None or self.failure is not None else int(value)


@dataclass
class Images:
    """The base images of one example on the registry's direct host."""

    builder_gzip: str
    builder_estargz: str
    runtime_gzip: str | None
    runtime_estargz: str | None


# --- base images ----------------------------------------------------------------------


def _convert(infra: BenchInfra, src: str, dst: str) -> None:
    with tempfile.TemporaryDirectory(dir=infra.workdir) as scratch:
        env = {"XDG_CACHE_HOME": f"{scratch}/cache", "DOCKER_CONFIG": f"{scratch}/docker"}
        done = timed_run(lazybuild_argv("convert", "--tmpdir", scratch, src, dst), env=env)
    if not done.ok:
        raise RuntimeError(f"converting {src} failed: {done.failure()}")


_converted: dict[str, str] = {}


def _estargz_of(infra: BenchInfra, gzip_ref: str) -> str:
    if gzip_ref not in _converted:
        estargz_ref = gzip_ref.rsplit(":", 1)[0] + ":estargz"
        _convert(infra, gzip_ref, estargz_ref)
        _converted[gzip_ref] = estargz_ref
    return _converted[gzip_ref]


def _runtime_image(infra: BenchInfra) -> str:
    host = infra.registry.host
    layout = imagebuild.cached_runtime_image(rootfs.debootstrap_rootfs("minbase", []))
    imagebuild.push_oci_layout(layout, host, "bench/runtime", "gzip")
    return f"{host}/bench/runtime:gzip"


def _python_image(infra: BenchInfra) -> str:
    """Debian bookworm minbase + python3, as the startup benchmark makes it."""
    host = infra.registry.host
    layout = imagebuild.cached_rootfs_image(
        rootfs.debootstrap_rootfs("minbase", rootfs.PYTHON_PACKAGES)
    )
    imagebuild.push_oci_layout(layout, host, "bench/python", "gzip")
    return f"{host}/bench/python:gzip"


def builder_image(infra: BenchInfra, example: Example) -> str:
    """The example's builder image, plain gzip, on the registry's direct host."""
    if example.builder == "python":
        return _python_image(infra)
    return infra.base_image(example.builder)


def _images(infra: BenchInfra, example: Example) -> Images:
    builder = builder_image(infra, example)
    runtime = _runtime_image(infra) if example.runtime else None
    return Images(
        builder_gzip=builder,
        builder_estargz=_estargz_of(infra, builder),
        runtime_gzip=runtime,
        runtime_estargz=_estargz_of(infra, runtime) if runtime else None,
    )


def _build_args(images: Images, host: str, direct: str, *, estargz: bool) -> list[str]:
    builder = images.builder_estargz if estargz else images.builder_gzip
    args = ["--build-arg", f"BUILDER={builder.replace(direct, host, 1)}"]
    runtime = images.runtime_estargz if estargz else images.runtime_gzip
    if runtime is not None:
        args += ["--build-arg", f"RUNTIME={runtime.replace(direct, host, 1)}"]
    return args


# --- eStargz indexes: what the builder's files cost compressed ------------------------


def _layer_indexes(infra: BenchInfra, ref: str) -> list[tuple[str, LayerIndex]]:
    """(layer digest, index) of every eStargz layer of `ref`, bottom layer first."""
    host, _, rest = ref.partition("/")
    repo = rest.rpartition(":")[0]
    indexes = []
    with httpx.Client(timeout=120) as client:
        for layer in infra.manifest(ref)["layers"]:
            digest, size = layer["digest"], int(layer["size"])
            expected = (layer.get("annotations") or {}).get(TOC_ANNOTATION)
            if not expected:
                continue
            url = f"http://{host}/v2/{repo}/blobs/{digest}"

            def read_at(offset: int, length: int, url: str = url) -> bytes:
                headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
                response = client.get(url, headers=headers, follow_redirects=True)
                response.raise_for_status()
                return response.content

            start, length = tail_read_range(size)
            opened = parse_layer(
                read_at(start, length), start, size, expected, read_at, where=digest
            )
            indexes.append((digest, opened.index))
    return indexes


def _chunk_size(chunk: ChunkRef) -> int:
    return chunk.end - chunk.offset


def _files_compressed(
    indexes: list[tuple[str, LayerIndex]], paths: set[str]
) -> tuple[int, int, dict[str, int]]:
    """(number of regular files, their compressed size, that size per layer digest): each
    path from the topmost layer that has it; chunks shared by several files counted once."""
    chunks: dict[tuple[str, int], int] = {}
    files = 0
    for path in paths:
        for digest, index in reversed(indexes):
            node = index.lookup(path)
            if node is None:
                continue
            if node.type == "reg":
                files += 1
                for chunk in node.chunks:
                    chunks[(digest, chunk.offset)] = _chunk_size(chunk)
            break
    per_layer: dict[str, int] = {}
    for (digest, _), size in chunks.items():
        per_layer[digest] = per_layer.get(digest, 0) + size
    return files, sum(chunks.values()), per_layer


def _cached_compressed(indexes: list[tuple[str, LayerIndex]], state: Path) -> int:
    """Compressed size of the chunks of `indexes` that are in the state dir's chunk cache."""
    root = state / "cache" / "chunks" / "sha256"
    total = 0
    seen: set[str] = set()
    for _, index in indexes:
        for node in index.walk():
            if node.type != "reg":
                continue
            for chunk in node.chunks:
                if chunk.digest in seen or not chunk.digest.startswith("sha256:"):
                    continue
                hex_digest = chunk.digest.removeprefix("sha256:")
                if (root / hex_digest[:2] / hex_digest).exists():
                    seen.add(chunk.digest)
                    total += _chunk_size(chunk)
    return total


def _cached_unread(
    indexes: list[tuple[str, LayerIndex]], state: Path, read_paths: set[str]
) -> tuple[int, list[tuple[str, int]]]:
    """Compressed size of the cached chunks that belong only to files the build step
    never opened, and those files (path, compressed bytes cached), biggest first."""
    root = state / "cache" / "chunks" / "sha256"
    read_chunks: set[str] = set()
    unread: dict[str, int] = {}
    for _, index in indexes:
        for node in index.walk():
            if node.type != "reg":
                continue
            path = node.name.strip("/")
            if path in read_paths:
                read_chunks.update(chunk.digest for chunk in node.chunks)
    seen: set[str] = set()
    for _, index in indexes:
        for node in index.walk():
            path = node.name.strip("/")
            if node.type != "reg" or path in read_paths:
                continue
            for chunk in node.chunks:
                if chunk.digest in seen or chunk.digest in read_chunks:
                    continue
                hex_digest = chunk.digest.removeprefix("sha256:")
                if (root / hex_digest[:2] / hex_digest).exists():
                    seen.add(chunk.digest)
                    unread[path] = unread.get(path, 0) + _chunk_size(chunk)
    files = sorted(unread.items(), key=lambda item: -item[1])
    return sum(unread.values()), files


# --- which files the build step reads: strace in a chroot ------------------------------


_OPEN = re.compile(r"^\d+\s+(?:open|openat|openat2)\(.*\)\s+=\s+\d+<(.+)>$")
_EXEC = re.compile(r'^\d+\s+execve\("([^"]+)",.*\)\s+=\s+0$')


def _resolve_in(root: Path, path: str, depth: int = 0) -> str | None:
    """`path` with symlinks resolved inside `root` (absolute links stay in it), relative."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            target = os.readlink(candidate)
            base = [] if target.startswith("/") else resolved
            rest = _resolve_in(root, "/".join([*base, target]), depth + 1)
            if rest is None:
                return None
            resolved = rest.split("/") if rest else []
        else:
            resolved.append(part)
    return "/".join(resolved)


def _check_run_line(example: Example) -> None:
    """The step replayed under strace must be the Dockerfile's own."""
    dockerfile = (EXAMPLES_DIR / example.name / "Dockerfile").read_text()
    if f"\nRUN {example.run}\n" not in dockerfile:
        raise RuntimeError(f"examples/{example.name}/Dockerfile has no `RUN {example.run}`")


def _interpreter(root: Path, program: str) -> str | None:
    """The dynamic loader (PT_INTERP) of ELF `program` under `root`, resolved in it."""
    try:
        data = (root / program).read_bytes()
    except OSError:
        return None
    if not is_elf(data[:4]):
        return None

    def read(offset: int, size: int) -> bytes | None:
        return data[offset : offset + size] if offset + size <= len(data) else None

    try:
        found = elf_dependencies(read)
    except ValueError:
        return None
    if found is None or not found.interpreter:
        return None
    return _resolve_in(root, found.interpreter)


def _in_chroot(example: Example, workdir: Path, *, trace: bool) -> tuple[set[str], float]:
    """Run the example's build step in a chroot on an overlay of the builder's root
    filesystem (no lazy filesystem, no container): how long it took, and with `trace`
    the paths (relative to /) of the files it opened or executed, seen by strace."""
    lower = rootfs.debootstrap_rootfs("minbase", BUILDER_PACKAGES[example.builder])
    scratch = Path(tempfile.mkdtemp(prefix=f"trace-{example.name}-", dir=workdir))
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for directory in (upper, work, merged):
        directory.mkdir()
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        target = merged / example.copy_to.lstrip("/")
        shutil.copytree(EXAMPLES_DIR / example.name, target, dirs_exist_ok=True)
        (target / "Dockerfile").unlink()
        log = scratch / "strace.log"
        env = [f"{k}={v}" for k, v in example.env.items()]
        strace = (
            ["strace", "-f", "-qq", "-y", "-o", str(log), "-e", "trace=open,openat,openat2,execve"]
            if trace
            else []
        )
        argv = [
            *strace, "chroot", str(merged), "/usr/bin/env", "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root", *env,
            "/bin/sh", "-c", f"cd {example.workdir} && {example.run}",
        ]  # fmt: skip
        done = timed_run(argv, timeout=STEP_TIMEOUT)
        if not done.ok:
            raise RuntimeError(f"tracing the {example.name} build step failed: {done.failure()}")
        paths: set[str] = set()
        if not trace:
            return paths, done.wall_s
        prefix = str(merged) + "/"
        lines = log.read_text(errors="replace").splitlines()
        # The first exec is the host's chroot, which is not part of the build.
        first_exec = next((i for i, line in enumerate(lines) if _EXEC.match(line)), -1)
        for number, line in enumerate(lines):
            if number == first_exec:
                continue
            if (match := _OPEN.match(line)) is not None:
                opened = match.group(1)
                if opened.startswith(prefix):
                    paths.add(opened.removeprefix(prefix))
            elif (match := _EXEC.match(line)) is not None:
                resolved = _resolve_in(merged, match.group(1))
                if resolved:
                    paths.add(resolved)
                    # The kernel opens a program's loader itself: strace shows no open.
                    interpreter = _interpreter(merged, resolved)
                    if interpreter:
                        paths.add(interpreter)
        return paths, done.wall_s
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


# --- the tools --------------------------------------------------------------------------


def _release_state(state: Path) -> None:
    subprocess.run(
        lazybuild_argv("--state-dir", str(state), "prune"), capture_output=True, check=False
    )
    procs.unmount_all_under(state)
    shutil.rmtree(state, ignore_errors=True)


def _file_in_image(infra: BenchInfra, ref: str, path: str) -> bytes | None:
    """The content of regular file `path` in the pushed image `ref` (direct host), read
    from its layers top down (gzip, eStargz or plain tar); None if no layer has it."""
    host, _, rest = ref.partition("/")
    repo = rest.rpartition(":")[0]
    wanted = path.strip("/")
    for layer in reversed(infra.manifest(ref)["layers"]):
        response = httpx.get(
            f"http://{host}/v2/{repo}/blobs/{layer['digest']}", follow_redirects=True, timeout=120
        )
        response.raise_for_status()
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:*") as tar:
            for member in tar:
                if member.name.removeprefix("./").strip("/") == wanted and member.isfile():
                    data = tar.extractfile(member)
                    return data.read() if data is not None else None
    return None


def _check_output(infra: BenchInfra, ref: str, example: Example) -> str:
    """Run the pushed image `ref` (direct host) with `lazybuild run`, or read its
    `check_path`; a problem or ""."""
    expected = example.expected
    if example.check_path is not None:
        content = _file_in_image(infra, ref, example.check_path)
        if content is None:
            return f"`{example.check_path}` is not in {ref}"
        if content.decode(errors="replace").strip() != expected:
            return f"`{example.check_path}` of {ref} holds {content!r}, not {expected!r}"
        return ""
    state = Path(tempfile.mkdtemp(prefix="check-", dir=infra.workdir))
    try:
        done = timed_run(
            lazybuild_argv("--state-dir", str(state), "run", "--network", "none", ref),
            env={"XDG_CACHE_HOME": str(state / "xdg-cache")},
            timeout=600,
        )
    finally:
        _release_state(state)
    if not done.ok:
        return done.failure()
    if done.stdout.strip() != expected:
        return f"`lazybuild run {ref}` printed {done.stdout.strip()!r}, not {expected!r}"
    return ""


@dataclass
class Run:
    """What one repetition of one tool needs."""

    infra: BenchInfra
    example: Example
    images: Images
    host: str  # registry host the tools use (WAN proxy or direct)
    n: int
    indexes: list[tuple[str, LayerIndex]]
    read_paths: set[str]  # the files the build step opens (strace in a chroot)
    # lazybuild's state dir after its cold build, kept for the learned rebuild.
    lazybuild_state: Path | None = None

    @property
    def context(self) -> Path:
        return EXAMPLES_DIR / self.example.name

    def dest(self, tool: str) -> str:
        return f"{self.host}/bench/build-{self.example.name}-{tool}-{self.n}:latest"

    def direct(self, ref: str) -> str:
        return ref.replace(self.host, self.infra.registry.host, 1)

    def build_args(self, *, estargz: bool) -> list[str]:
        return _build_args(self.images, self.host, self.infra.registry.host, estargz=estargz)


def _record(run: Run, into: Measured, build: Timed, push: Timed | None) -> bool:
    for step in (build, push):
        if step is not None and not step.ok:
            into.fail(step.failure())
            return False
    wan = run.infra.wan
    into.build.append(build.wall_s)
    into.push.append(push.wall_s if push is not None else 0.0)
    into.wall.append(build.wall_s + (push.wall_s if push is not None else 0.0))
    into.down.append(wan.bytes_to_client)
    into.up.append(wan.bytes_to_upstream)
    return True


def _lazybuild_command(run: Run, state: Path, tag: str, *options: str) -> Timed:
    argv = [
        sys.executable, "-m", "lazybuild", "--state-dir", str(state),
        "build", "--progress=plain", "--network", "none", *run.build_args(estargz=True),
        "-t", tag, "--push", *options, str(run.context),
    ]  # fmt: skip
    env = {"XDG_CACHE_HOME": str(state / "xdg-cache")}
    return timed_run(argv, env=env, timeout=STEP_TIMEOUT)


def _record_lazybuild(run: Run, into: Measured, build: Timed, report: Path) -> bool:
    """A lazybuild build's time, output and fetch report; False if it failed."""
    into.progress.append(build.stderr + build.stdout)
    if not _record(run, into, build, None):
        return False
    data = json.loads(report.read_text())
    into.reports.append(data)
    into.fetched.append(int(data["bytes_fetched"]))
    into.requests.append(sum(int(layer["requests"]) for layer in data["layers"]))
    return True


def _lazybuild(run: Run, into: Measured) -> None:
    state = Path(tempfile.mkdtemp(prefix=f"build-{run.n}-", dir=run.infra.workdir))
    report = state / "fetch-report.json"
    ref = run.dest("lazybuild")
    kept = False
    try:
        run.infra.wan.reset_counters()
        cold = _lazybuild_command(run, state, ref, "--fetch-report", str(report))
        if not _record_lazybuild(run, into, cold, report):
            return
        into.cached.append(_cached_compressed(run.indexes, state))
        unread, unread_files = _cached_unread(run.indexes, state, run.read_paths)
        into.unread.append(unread)
        if run.n == 0:
            into.unread_files = unread_files
        if run.n == 0:
            # Not compared with anything: the same build again with every chunk it reads
            # in the cache already, to tell fetching from the rest of the build's time.
            warm = _lazybuild_command(run, state, f"{ref}-warm", "--no-cache")
            if warm.ok:
                into.warm = warm.wall_s
                into.warm_progress = warm.stderr + warm.stdout
        run.lazybuild_state, kept = state, True
    finally:
        if not kept:
            _release_state(state)
    if run.n == 0:
        into.check = _check_output(run.infra, run.direct(ref), run.example)


def _lazybuild_learned(run: Run, into: Measured) -> None:
    """The build again in the cold build's state dir with its chunk cache emptied (as
    after a base image update or a prune) and `--no-cache`: every step runs, nothing is
    cached, but each RUN step prefetches what it read last time."""
    state = run.lazybuild_state
    if state is None:
        into.fail("the cold lazybuild build before it failed")
        return
    try:
        # The chunks go, and the TOCs: an updated base image has new layers, which
        # this machine has not used before (a layer used again is fetched whole).
        shutil.rmtree(state / "cache", ignore_errors=True)
        shutil.rmtree(state / "tocs", ignore_errors=True)
        report = state / "fetch-report-learned.json"
        run.infra.wan.reset_counters()
        done = _lazybuild_command(
            run, state, run.dest("lazybuild-learned"), "--no-cache", "--fetch-report", str(report)
        )
        _record_lazybuild(run, into, done, report)
    finally:
        run.lazybuild_state = None
        _release_state(state)


def _docker(run: Run, into: Measured) -> None:
    dockerd = run.infra.dockerd
    env = {"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.config_dir)}
    ref = run.dest("docker")
    run.infra.wan.reset_counters()
    build = timed_run(
        [DOCKER_CLI, "build", "-q", "--network", "none", *run.build_args(estargz=False),
         "-t", ref, str(run.context)],
        env={**env, "DOCKER_BUILDKIT": "0"},
        timeout=STEP_TIMEOUT,
    )  # fmt: skip
    push = None
    if build.ok:
        push = timed_run([DOCKER_CLI, "push", "-q", ref], env=env, timeout=STEP_TIMEOUT)
    recorded = _record(run, into, build, push)
    # Everything goes, so the next repetition pulls and builds from nothing.
    dockerd.docker("rmi", "-f", ref, check=False)
    dockerd.docker("container", "prune", "-f", check=False)
    dockerd.docker("image", "prune", "-a", "-f", check=False)
    dockerd.docker("builder", "prune", "-a", "-f", check=False)
    if recorded and run.n == 0:
        into.check = _check_output(run.infra, run.direct(ref), run.example)


def _buildah(run: Run, into: Measured) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"buildah-{run.n}-", dir=run.infra.workdir))
    storage = [
        "--root", str(root / "root"), "--runroot", str(root / "runroot"),
        "--storage-driver", "overlay",
    ]  # fmt: skip
    ref = run.dest("buildah")
    try:
        run.infra.wan.reset_counters()
        build = timed_run(
            [BUILDAH, *storage, "bud", "--quiet", "--tls-verify=false", "--isolation", "oci",
             "--runtime", RUNC, "--network", "none", *run.build_args(estargz=False),
             "-t", ref, str(run.context)],
            timeout=STEP_TIMEOUT,
        )  # fmt: skip
        push = (
            timed_run(
                [BUILDAH, *storage, "push", "--quiet", "--tls-verify=false", ref],
                timeout=STEP_TIMEOUT,
            )
            if build.ok
            else None
        )
        recorded = _record(run, into, build, push)
    finally:
        for cleanup in (["rm", "--all"], ["rmi", "--all", "--force"]):
            subprocess.run([BUILDAH, *storage, *cleanup], capture_output=True, check=False)
        procs.unmount_all_under(root)
        shutil.rmtree(root, ignore_errors=True)
    if recorded and run.n == 0:
        into.check = _check_output(run.infra, run.direct(ref), run.example)


TOOLS: list[tuple[str, str, Callable[[Run, Measured], None]]] = [
    ("lazybuild", "lazybuild build --push (eStargz bases, lazy)", _lazybuild),
    (
        "lazybuild-learned",
        "lazybuild build --no-cache --push again, chunk cache emptied (learned prefetch)",
        _lazybuild_learned,
    ),
    ("docker", "docker build (legacy builder) + docker push", _docker),
    ("buildah", "buildah bud + buildah push", _buildah),
]


# --- lazybuild's progress: where the time goes -------------------------------------------


_STEP_DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s")
_STEP_NAME = re.compile(r"^#(\d+) (\[.*|[A-Za-z].*)$")


def _step_times(progress: str) -> list[tuple[str, float]]:
    """(step name, seconds) from plain progress output, longest first."""
    names: dict[str, str] = {}
    times: list[tuple[str, float]] = []
    for line in progress.splitlines():
        if (done := _STEP_DONE.match(line)) is not None:
            step = done.group(1)
            times.append((_short(names.get(step, f"#{step}")), float(done.group(2))))
        elif (named := _STEP_NAME.match(line)) is not None and named.group(1) not in names:
            names.setdefault(named.group(1), named.group(2).strip())
    return sorted(times, key=lambda item: -item[1])


# --- the section ---------------------------------------------------------------------------


def _short(text: str, width: int = 72) -> str:
    """A long command cut for the report, e.g. a `python3 -c` one-liner."""
    return text if len(text) <= width else text[: width - 2].rstrip() + " …"


def _check_text(example: Example) -> str:
    if example.check_path is not None:
        return (
            f"`{example.check_path}` of each tool's first pushed image holds `{example.expected}`"
        )
    return f"`lazybuild run` of each tool's first pushed image prints `{example.expected}`"


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def run(infra: BenchInfra, repeat: int = 3, *, wan: bool = True) -> Section:
    load_before = os.getloadavg()[0]
    direct = infra.registry.host
    host = infra.wan.host if wan else direct
    infra.dockerd  # noqa: B018 - started before the clock runs, not inside a repetition

    prepared = []
    for example in EXAMPLES:
        _check_run_line(example)
        images = _images(infra, example)
        indexes = _layer_indexes(infra, images.builder_estargz)
        _, native_s = _in_chroot(example, infra.workdir, trace=False)
        read_paths, _ = _in_chroot(example, infra.workdir, trace=True)
        read_files, read_bytes, read_per_layer = _files_compressed(indexes, read_paths)
        prepared.append(
            (example, images, indexes, read_paths, read_files, read_bytes, read_per_layer, native_s)
        )

    results: dict[str, dict[str, Measured]] = {}
    for example, images, indexes, read_paths, *_ in prepared:
        measured = {name: Measured(label) for name, label, _ in TOOLS}
        results[example.name] = measured
        for n in range(repeat):
            # Interleaved so that drift in the machine's speed affects the tools alike.
            job = Run(infra, example, images, host, n, indexes, read_paths)
            for name, _, measure in TOOLS:
                print(f"bench build: {example.name} {name} #{n}", file=sys.stderr, flush=True)
                measure(job, measured[name])

    notes: list[str] = []
    image_lines: list[str] = []
    tables: list[list[str]] = [
        [
            "example",
            "tool",
            f"build + push (median of {repeat})",
            "build",
            "push",
            "down (proxy → client)",
            "up (proxy → registry)",
            "time ratio to the faster peer",
        ]
    ]
    verdicts: list[str] = []
    for example, images, _, _, read_files, read_bytes, read_per_layer, native_s in prepared:
        measured = results[example.name]
        lazy = measured["lazybuild"]
        peers = [m for name, m in measured.items() if not name.startswith("lazybuild")]
        peer_walls = [m.wall_median for m in peers if m.wall_median is not None]
        fastest = min(peer_walls) if peer_walls else None
        for name, m in measured.items():
            push_text = seconds(median(m.push)) if m.failure is None else "n/a"
            if name.startswith("lazybuild"):
                push_text = "(in build)"
            tables.append(
                [
                    example.name,
                    m.label,
                    seconds(m.wall_median),
                    seconds(median(m.build)) if m.failure is None else "n/a",
                    push_text,
                    data_size(m.int_median(m.down)),
                    data_size(m.int_median(m.up)),
                    ratio(m.wall_median, fastest),
                ]
            )
            if m.failure:
                notes.append(f"**{example.name}, {m.label} failed**: {m.failure}")
        time_ratio = lazy.wall_median / fastest if lazy.wall_median and fastest else None
        verdicts.append(
            verdict(
                f"{example.name}, time (lazybuild ≤ {TIME_GOAL} x the faster peer)",
                time_ratio,
                TIME_GOAL,
            )
        )
        fetched = lazy.int_median(lazy.fetched)
        cached = lazy.int_median(lazy.cached)
        fetch_ratio = fetched / read_bytes if fetched is not None and read_bytes else None
        verdicts.append(
            verdict(
                f"{example.name}, fetching (bytes fetched ≤ {FETCH_GOAL} x compressed size of "
                "the files the build step reads)",
                fetch_ratio,
                FETCH_GOAL,
            )
        )
        builder_size = infra.compressed_size(images.builder_estargz)
        requests = lazy.int_median(lazy.requests)
        notes.append(
            f"{example.name}: lazybuild fetched {data_size(fetched)} of the eStargz builder's "
            f"{mebibytes(builder_size)} in {requests} range requests (fetch report, median); "
            f"the build step reads {read_files} files of the builder, {data_size(read_bytes)} "
            f"compressed (strace of `{_short(example.run)}` in a chroot of the builder's root "
            f"filesystem); fetched / that = "
            f"{ratio(fetched, read_bytes)}. The chunks in lazybuild's cache after the build "
            f"are {data_size(cached)} compressed (fetched / cached chunks = "
            f"{ratio(fetched, cached)}); of them, {data_size(lazy.int_median(lazy.unread))} "
            "belong to files the build step never opens (read ahead across files that lie "
            "next to each other in the layer)"
            + (
                ", biggest in the first repetition: "
                + ", ".join(f"`/{path}` {data_size(size)}" for path, size in lazy.unread_files[:6])
                if lazy.unread_files
                else ""
            )
            + ". The rest of the difference between fetched and cached is TOCs, footers and "
            "gaps between coalesced ranges."
        )
        if lazy.reports:
            layers = lazy.reports[0]["layers"]
            assert isinstance(layers, list)
            per_layer = "; ".join(
                f"{layer['digest'][7:19]} ({layer['mode']}, {data_size(int(layer['size']))}): "
                f"{data_size(int(layer['bytes_fetched']))} in {layer['requests']} requests, "
                f"{float(layer['seconds']):.1f} s"
                + (
                    f" (the step reads {data_size(read_per_layer[layer['digest']])} of it)"
                    if layer["digest"] in read_per_layer
                    else ""
                )
                for layer in layers
            )
            notes.append(
                f"{example.name}: lazybuild fetch report of the first repetition (compressed "
                f"size of the files the build step reads from each builder layer in "
                f"parentheses): {per_layer}."
            )
        if lazy.progress:
            steps = _step_times(lazy.progress[0])[:3]
            text = (
                f"{example.name}, where lazybuild's time goes (first repetition): longest "
                "steps (plain progress) "
                + "; ".join(f"`{name}` {secs:.1f} s" for name, secs in steps)
            )
            if lazy.warm is not None:
                warm_steps = _step_times(lazy.warm_progress)[:1]
                text += (
                    f". The same build again with `--no-cache` in the same state dir (every "
                    f"chunk it reads already cached, only TOC checks and the push on the "
                    f"link) took {lazy.warm:.1f} s"
                    + "".join(f", `{name}` {secs:.1f} s" for name, secs in warm_steps)
                )
            text += (
                f". The build step alone, run directly in a chroot of the builder's root "
                f"filesystem on local disk: {native_s:.1f} s."
            )
            notes.append(text)
        learned = measured["lazybuild-learned"]
        if learned.wall_median is not None:
            notes.append(
                f"{example.name}: learned prefetch: the same build again in the cold build's "
                "state dir with its chunk cache deleted and `--no-cache` (as after a base "
                "image update or a prune: every step runs, no chunk is cached) took "
                f"{learned.wall_median:.1f} s ({ratio(learned.wall_median, fastest)} x the "
                f"faster peer), with {learned.int_median(learned.requests)} range requests "
                f"for {data_size(learned.int_median(learned.fetched))} (cold: "
                f"{lazy.int_median(lazy.requests)} for {data_size(fetched)}): each RUN step "
                "fetched what it read last time in 2 MiB requests as it started."
            )
        notes.append(
            f"{example.name}: times per repetition: "
            + "; ".join(f"{name} {seconds_list(m.wall, 1)}" for name, m in measured.items())
            + "."
        )
        checks = []
        for name, m in measured.items():
            if name == "lazybuild-learned":
                continue
            tool = m.label.split(" ")[0]
            if m.check is None:
                checks.append(f"{tool}: not checked")
            elif m.check:
                checks.append(f"{tool}: **failed**: {m.check}")
            else:
                checks.append(f"{tool}: ok")
        notes.append(
            f"{example.name}: output check ({_check_text(example)}): " + "; ".join(checks) + "."
        )
        refs = [("builder", images.builder_gzip, images.builder_estargz)]
        if images.runtime_gzip and images.runtime_estargz:
            refs.append(("runtime", images.runtime_gzip, images.runtime_estargz))
        for role, gzip_ref, estargz_ref in refs:
            image_lines.append(
                f"- {example.name} {role} `{gzip_ref.split('/', 1)[1].split(':')[0]}`: "
                f"{_layers(len(infra.manifest(gzip_ref)['layers']))}, gzip "
                f"{mebibytes(infra.compressed_size(gzip_ref))} (docker, buildah), eStargz "
                f"{mebibytes(infra.compressed_size(estargz_ref))} (lazybuild)"
            )

    setup = describe(
        {
            "lazybuild": lazybuild_argv("--version"),
            "dockerd": ["/usr/sbin/dockerd", "--version"],
            "buildah": [BUILDAH, "--version"],
            "runc": [RUNC, "--version"],
            "registry": ["docker-registry", "--version"],
        }
    )
    setup += [
        load_line(load_before),
        f"- Link: {WAN_DESCRIPTION}" if wan else "- Link: loopback (--no-wan)",
        "- Base images: Debian bookworm minbase, then one layer with the packages "
        "(gcc + libc6-dev; golang-go, Go 1.19), made with debootstrap; the python builder "
        "is Debian bookworm minbase + python3 (Python 3.11) split into layers at usr/share "
        "and usr/lib, as the startup benchmark makes it; the C runtime is libc + loader "
        "only. Pushed as plain gzip, converted by `lazybuild convert` to eStargz outside "
        "the timing; in docker-registry on 127.0.0.1:",
        *[f"  {line}" for line in image_lines],
        "- Examples: `examples/hello-c` (`gcc -O2` in the gcc builder, binary copied onto "
        "the C runtime image, `RUNTIME` build arg), `examples/hello-go` (`go build` of a "
        "program using net/http, net/http/httptest and encoding/json, CGO_ENABLED=0, in "
        "the golang builder, static binary copied onto scratch) and `examples/hello-py` "
        '(`python3 -c "import hashlib, json; ..."` in the python builder writes a JSON '
        "file of a message and its SHA-256, copied onto scratch; its check reads that "
        "file from the pushed image); each result is pushed to a new repository through "
        "the link",
        LAYER_FORMAT_LINE,
        "- lazybuild: `lazybuild --state-dir NEW build --progress=plain --network none "
        "--build-arg BUILDER=<eStargz> [--build-arg RUNTIME=<eStargz>] -t REF --push "
        "--fetch-report F CTX`, one command timed (build and push)",
        "- docker: private dockerd (own data root, overlay2, no bridge); "
        "`DOCKER_BUILDKIT=0 docker build -q --network none --build-arg ... -t REF CTX` then "
        "`docker push REF`, timed together; after each repetition `docker rmi -f`, "
        "`docker container prune -f`, `docker image prune -af`, `docker builder prune -af`",
        "- buildah: `buildah --root NEW --runroot NEW --storage-driver overlay bud --quiet "
        "--tls-verify=false --isolation oci --runtime /usr/sbin/runc --network none "
        "--build-arg ... -t REF CTX` then `buildah push --quiet --tls-verify=false REF`, "
        "timed together; storage dirs removed after each repetition",
        "- Wire bytes are what the WAN proxy delivered (down: registry → tool, pulls and "
        "lazy reads; up: tool → registry, pushes), HTTP overhead included.",
        "- Repetitions interleave the three tools; figures are medians.",
    ]
    notes[:0] = verdicts
    return Section(
        name="build",
        title="build: cold multi-stage build + push over the WAN, lazybuild vs docker and buildah",
        setup=setup,
        table=tables,
        notes=notes,
    )
