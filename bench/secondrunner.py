"""`secondrunner`: a CI fleet's second runner, over the emulated WAN link.

Runner A builds `examples/go-ci` (a Go service built with cache mounts for Go's build
and module caches) from nothing, pushes it and exports its build cache to the registry;
runner B, fresh (a new state dir, root or image store), rebuilds after a one-line change
to `main.go` and pushes. Timed: B's build + push, and B's bytes down.

- lazybuild: A `--cache-to type=registry,ref=CACHE,mode=max,cache-mounts=true`; B
  `--cache-from CACHE` (hits mounted lazily; the `go build` step that must run prefetches
  what it read on A and finds A's Go build cache as the lazy lower of its cache mount).
- buildah: A `bud --layers --cache-to REPO`; B `bud --layers --cache-from REPO` (its
  remote cache: layers of hits are pulled whole; cache mounts stay on the runner).
- docker: the legacy builder has no remote cache and no cache mounts: B pulls the base
  and builds it all, from the Dockerfile with its `--mount` flags taken out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.build import BUILDAH, EXAMPLES, EXAMPLES_DIR, RUNC, STEP_TIMEOUT, Example, _images
from bench.convert import lazybuild_argv
from bench.infra import WAN_DESCRIPTION, BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, data_size, ratio, seconds, verdict
from bench.timing import Timed, median, timed_run
from tests.support import procs
from tests.support.dockerd import DOCKER_CLI

# go-ci's program links net/http: with CGO_ENABLED=0 its first build compiles net,
# crypto/tls and net/http into Go's build cache, the work a travelling cache saves.
EXAMPLE_DIR = "go-ci"
# The golang builder images of the hello-go example serve go-ci too.
BUILDER_OF: Example = next(example for example in EXAMPLES if example.name == "hello-go")
TIME_GOAL = 0.25  # B's build + push / the faster peer's, at most
BYTES_GOAL = 0.25  # B's bytes down / the cache's size, at most
CHANGE = ('name := "world"', 'name := "wor" + "ld"')  # one line of main.go, same output
LEGACY_DOCKERFILE = "Dockerfile.legacy"  # go-ci's Dockerfile without `RUN --mount` flags


@dataclass
class Measured:
    label: str
    wall: list[float] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    cache_bytes: list[int] = field(default_factory=list)
    failure: str | None = None

    def fail(self, why: str) -> None:
        self.failure = self.failure or why


def _changed_context(scratch: Path) -> tuple[Path, Path]:
    """(A's context, B's context: the same with one line of main.go changed)."""
    before = scratch / "a"
    shutil.copytree(EXAMPLES_DIR / EXAMPLE_DIR, before)
    after = scratch / "b"
    shutil.copytree(before, after)
    main = after / "main.go"
    text = main.read_text()
    if CHANGE[0] not in text:
        raise RuntimeError(f"main.go of {EXAMPLE_DIR} has no {CHANGE[0]!r} to change")
    main.write_text(text.replace(CHANGE[0], CHANGE[1], 1))
    dockerfile = (after / "Dockerfile").read_text()
    (after / LEGACY_DOCKERFILE).write_text(without_mount_flags(dockerfile))
    return before, after


def without_mount_flags(dockerfile: str) -> str:
    """The Dockerfile for a builder without `RUN --mount` (docker's legacy builder):
    the flags dropped, so the step runs with its caches inside the container."""
    return re.sub(r"--mount=\S+\s+(\\\n\s*)?", "", dockerfile)


def _lazybuild(
    infra: BenchInfra, builder: str, contexts: tuple[Path, Path], n: int, into: Measured
) -> None:
    host = infra.wan.host
    cache = f"{host}/bench/second-lazybuild-cache-{n}:cache"
    scratch = Path(tempfile.mkdtemp(prefix=f"second-lazybuild-{n}-", dir=infra.workdir))
    try:

        def build(state: str, context: Path, *options: str) -> Timed:
            argv = [
                sys.executable, "-m", "lazybuild", "--state-dir", str(scratch / state),
                "build", "--progress=plain", "--network", "none",
                "--build-arg", f"BUILDER={builder}", *options, "--push", str(context),
            ]  # fmt: skip
            env = {"XDG_CACHE_HOME": str(scratch / "xdg")}
            return timed_run(argv, env=env, timeout=STEP_TIMEOUT)

        first = build(
            "a", contexts[0], "--cache-to", f"type=registry,ref={cache},mode=max,cache-mounts=true",
            "-t", f"{host}/bench/second-lazybuild-a-{n}:latest",
        )  # fmt: skip
        if not first.ok:
            into.fail(f"runner A: {first.failure()}")
            return
        infra.wan.reset_counters()
        second = build(
            "b", contexts[1], "--cache-from", cache,
            "-t", f"{host}/bench/second-lazybuild-b-{n}:latest",
        )  # fmt: skip
        if not second.ok:
            into.fail(f"runner B: {second.failure()}")
            return
        into.wall.append(second.wall_s)
        into.down.append(infra.wan.bytes_to_client)
        into.cache_bytes.append(_lazybuild_cache_size(infra, cache))
    finally:
        subprocess.run(
            [sys.executable, "-m", "lazybuild", "--state-dir", str(scratch / "a"), "prune"],
            capture_output=True,
            check=False,
        )
        subprocess.run(
            [sys.executable, "-m", "lazybuild", "--state-dir", str(scratch / "b"), "prune"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(scratch, ignore_errors=True)


def _lazybuild_cache_size(infra: BenchInfra, cache: str) -> int:
    """The cache's own blobs and the base layers its records name, compressed."""
    direct = cache.replace(infra.wan.host, infra.registry.host, 1)
    manifest = infra.manifest(direct)
    repository = direct.partition("/")[2].rpartition(":")[0]
    config = httpx.get(
        f"http://{infra.registry.host}/v2/{repository}/blobs/{manifest['config']['digest']}",
        timeout=30,
    )
    config.raise_for_status()
    document = json.loads(config.content)
    return sum(int(layer["descriptor"]["size"]) for layer in document["layers"])


def _buildah(
    infra: BenchInfra, builder: str, contexts: tuple[Path, Path], n: int, into: Measured
) -> None:
    host = infra.wan.host
    cache = f"{host}/bench/second-buildah-cache-{n}"
    roots: list[Path] = []

    def runner(name: str, context: Path, cache_flag: str) -> Timed | None:
        root = Path(tempfile.mkdtemp(prefix=f"second-buildah-{name}-{n}-", dir=infra.workdir))
        roots.append(root)
        storage = ["--root", str(root / "root"), "--runroot", str(root / "runroot"),
                   "--storage-driver", "overlay"]  # fmt: skip
        ref = f"{host}/bench/second-buildah-{name}-{n}:latest"
        started = timed_run(
            [BUILDAH, *storage, "bud", "--quiet", "--layers", cache_flag, cache,
             "--tls-verify=false", "--isolation", "oci", "--runtime", RUNC, "--network", "none",
             "--build-arg", f"BUILDER={builder}", "-t", ref, str(context)],
            timeout=STEP_TIMEOUT,
        )  # fmt: skip
        if not started.ok:
            into.fail(f"runner {name}: {started.failure()}")
            return None
        push = timed_run(
            [BUILDAH, *storage, "push", "--quiet", "--tls-verify=false", ref], timeout=STEP_TIMEOUT
        )
        if not push.ok:
            into.fail(f"runner {name} push: {push.failure()}")
            return None
        return Timed([], started.wall_s + push.wall_s, started.cpu_s + push.cpu_s, 0, "", "")

    try:
        if runner("a", contexts[0], "--cache-to") is None:
            return
        infra.wan.reset_counters()
        second = runner("b", contexts[1], "--cache-from")
        if second is not None:
            into.wall.append(second.wall_s)
            into.down.append(infra.wan.bytes_to_client)
    finally:
        for root in roots:
            storage = ["--root", str(root / "root"), "--runroot", str(root / "runroot")]
            for cleanup in (["rm", "--all"], ["rmi", "--all", "--force"]):
                subprocess.run([BUILDAH, *storage, *cleanup], capture_output=True, check=False)
            procs.unmount_all_under(root)
            shutil.rmtree(root, ignore_errors=True)


def _docker(
    infra: BenchInfra, builder: str, contexts: tuple[Path, Path], n: int, into: Measured
) -> None:
    dockerd = infra.dockerd
    env = {"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.config_dir)}
    ref = f"{infra.wan.host}/bench/second-docker-{n}:latest"
    infra.wan.reset_counters()
    build = timed_run(
        [DOCKER_CLI, "build", "-q", "--network", "none", "--build-arg", f"BUILDER={builder}",
         "-f", str(contexts[1] / LEGACY_DOCKERFILE), "-t", ref, str(contexts[1])],
        env={**env, "DOCKER_BUILDKIT": "0"},
        timeout=STEP_TIMEOUT,
    )  # fmt: skip
    push = timed_run([DOCKER_CLI, "push", "-q", ref], env=env, timeout=STEP_TIMEOUT)
    if build.ok and push.ok:
        into.wall.append(build.wall_s + push.wall_s)
        into.down.append(infra.wan.bytes_to_client)
    else:
        into.fail((build if not build.ok else push).failure())
    for args in (["rmi", "-f", ref], ["container", "prune", "-f"], ["image", "prune", "-a", "-f"],
                 ["builder", "prune", "-a", "-f"]):  # fmt: skip
        dockerd.docker(*args, check=False)


Tool = Callable[[BenchInfra, str, tuple[Path, Path], int, Measured], None]


def run(infra: BenchInfra, repeat: int = 3, *, wan: bool = True) -> Section:
    load_before = os.getloadavg()[0]
    images = _images(infra, BUILDER_OF)
    direct = infra.registry.host
    host = infra.wan.host
    tools: list[tuple[Measured, Tool, str]] = [
        (Measured("lazybuild build --cache-from (eStargz base, lazy hits)"), _lazybuild,
         images.builder_estargz),
        (Measured("buildah bud --layers --cache-from (remote cache)"), _buildah,
         images.builder_gzip),
        (Measured("docker build (legacy builder, no remote cache: full rebuild)"), _docker,
         images.builder_gzip),
    ]  # fmt: skip
    infra.dockerd  # noqa: B018 - started before the clock runs
    scratch = Path(tempfile.mkdtemp(prefix="second-contexts-", dir=infra.workdir))
    try:
        contexts = _changed_context(scratch)
        for n in range(repeat):
            for measured, tool, builder in tools:
                print(f"bench secondrunner: {measured.label.split(' ')[0]} #{n}", file=sys.stderr)
                tool(infra, builder.replace(direct, host, 1), contexts, n, measured)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lazy, buildah, docker = (measured for measured, _, _ in tools)
    peers = [median(m.wall) for m in (buildah, docker) if m.wall and m.failure is None]
    faster = min((p for p in peers if p is not None), default=None)
    table = [["tool", "B's build + push (median)", "B's bytes down", "ratio to the faster peer"]]
    for measured in (lazy, buildah, docker):
        wall = median(measured.wall)
        down = median([float(d) for d in measured.down])
        table.append([
            measured.label,
            seconds(wall) if measured.failure is None else "failed",
            data_size(int(down)) if down is not None else "n/a",
            ratio(wall, faster) if measured.failure is None else "n/a",
        ])  # fmt: skip
    lazy_wall = median(lazy.wall)
    lazy_down = median([float(d) for d in lazy.down])
    cache_size = median([float(c) for c in lazy.cache_bytes])
    notes = [
        verdict(
            f"B's build + push (lazybuild ≤ {TIME_GOAL} x the faster peer)",
            lazy_wall / faster if lazy_wall and faster else None,
            TIME_GOAL,
        ),
        verdict(
            f"B's bytes down (lazybuild ≤ {BYTES_GOAL} x the cache's size: its own blobs and "
            "the base layers its records name)",
            lazy_down / cache_size if lazy_down is not None and cache_size else None,
            BYTES_GOAL,
        ),
        "Times per repetition: "
        + "; ".join(
            f"{m.label.split(' ')[0]} " + ", ".join(f"{w:.1f}" for w in m.wall) + " s"
            for m in (lazy, buildah, docker)
        )
        + ".",
    ]
    for measured in (lazy, buildah, docker):
        if measured.failure:
            notes.append(f"**{measured.label} failed**: {measured.failure}")
    return Section(
        name="secondrunner",
        title="secondrunner: a fresh CI runner rebuilds after a one-line change, with the "
        "first runner's cache in the registry",
        setup=[
            *describe(
                {
                    "lazybuild": lazybuild_argv("--version"),
                    "dockerd": ["/usr/sbin/dockerd", "--version"],
                    "buildah": [BUILDAH, "--version"],
                    "registry": ["docker-registry", "--version"],
                }
            ),
            load_line(load_before),
            f"- Link: {WAN_DESCRIPTION} (every pull, push, cache read and write)",
            f"- Example: `examples/{EXAMPLE_DIR}` (a Go service linking net/http, CGO_ENABLED=0, "
            "`RUN --mount=type=cache` for GOCACHE and GOMODCACHE) on the golang builder "
            "(Debian bookworm minbase + golang-go 1.19); runner B's context differs from A's "
            "by one line of `main.go`, so B's `go build` step must run",
            "- Runner A, untimed: a build from nothing that pushes the image and exports its "
            "cache (lazybuild `--cache-to type=registry,ref=CACHE,mode=max,cache-mounts=true`; "
            "buildah `bud --layers --cache-to REPO`, whose cache holds no cache mount); "
            "docker's legacy builder has no remote cache and no cache mounts (it builds the "
            "Dockerfile with the `--mount` flags removed)",
            "- Runner B, timed: fresh (new state dir / storage root / images pruned), build "
            "with the cache (lazybuild `--cache-from CACHE`, buildah `--cache-from REPO`) "
            "and push to a new repository",
            "- Repetitions interleave the tools; figures are medians.",
        ],
        table=table,
        notes=notes,
    )
