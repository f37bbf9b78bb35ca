"""`ciday`: a CI day in miniature, through the build daemon.

Ten builds, one after another, of small variants of `examples/go-ci` (a Go service
linking net/http, Go's build and module caches as cache mounts; one string of its
greeting package differs, so each build's `go build` step runs) on the golang builder,
each pushed to a new repository, over the emulated WAN link:

- through `lazybuild serve` (started before the clock runs, on a fresh state dir: the
  first build is cold), with `lazybuild build --builder unix://...`;
- with one-shot `lazybuild build` commands sharing one state directory (a runner host
  that keeps its state between jobs, but no process);
- with docker's legacy builder (its daemon keeps the base image after the first pull;
  it has no cache mounts, so it builds the Dockerfile with the `--mount` flags taken
  out, each `go build` starting from an empty build cache).

Also a trivial build (`FROM debian`, `RUN true`, `--no-cache`) through the warm daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.build import EXAMPLES, EXAMPLES_DIR, STEP_TIMEOUT, Example, _estargz_of, _images
from bench.convert import lazybuild_argv
from bench.infra import WAN_DESCRIPTION, BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, ratio, seconds, verdict
from bench.secondrunner import LEGACY_DOCKERFILE, without_mount_flags
from bench.timing import Timed, median, timed_run
from tests.support.dockerd import DOCKER_CLI

EXAMPLE_DIR = "go-ci"
# The golang builder images of the hello-go example serve go-ci too.
BUILDER_OF: Example = next(example for example in EXAMPLES if example.name == "hello-go")
BUILDS = 10
TOTAL_GOAL = 0.5  # the daemon's ten builds / docker's, at most
TRIVIAL_GOAL_S = 0.5  # a trivial build through a warm daemon, at most
CHANGED = "from a Go program built in CI by lazybuild"  # the string each variant changes
CHANGED_FILE = "internal/greeting/greeting.go"
DAEMON_START_TIMEOUT = 60.0


@dataclass
class Measured:
    label: str
    walls: list[float] = field(default_factory=list)
    failure: str | None = None

    @property
    def total(self) -> float | None:
        return sum(self.walls) if self.failure is None and len(self.walls) == BUILDS else None


def _variants(scratch: Path) -> list[Path]:
    """BUILDS copies of the example, each with its own greeting."""
    contexts = []
    for n in range(BUILDS):
        context = scratch / f"variant-{n}"
        shutil.copytree(EXAMPLES_DIR / EXAMPLE_DIR, context)
        changed = context / CHANGED_FILE
        text = changed.read_text()
        if CHANGED not in text:
            raise RuntimeError(f"{CHANGED_FILE} of {EXAMPLE_DIR} has no {CHANGED!r} to change")
        changed.write_text(text.replace(CHANGED, f"{CHANGED} (variant {n})", 1))
        dockerfile = (context / "Dockerfile").read_text()
        (context / LEGACY_DOCKERFILE).write_text(without_mount_flags(dockerfile))
        contexts.append(context)
    return contexts


def _trivial_context(scratch: Path, base: str) -> Path:
    context = scratch / "trivial"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN true\n")
    return context


class _Daemon:
    """`lazybuild serve` on a unix socket of its own, with a state dir of its own."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.socket = root / "lazybuild.sock"
        self.address = f"unix://{self.socket}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = root / "daemon.log"

    def start(self) -> None:
        argv = lazybuild_argv("--state-dir", str(self.state), "serve", "--addr", self.address)
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"lazybuild serve exited: {self._log.read_text()[-500:]}")
            probe = subprocess.run(
                lazybuild_argv("du", "--builder", self.address), capture_output=True, check=False
            )
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("lazybuild serve did not answer within a minute")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _lazybuild_build(
    prefix: list[str], builder: str, context: Path, ref: str, *extra: str
) -> Timed:
    argv = lazybuild_argv(
        *prefix, "build", "--progress=plain", "--network", "none",
        "--build-arg", f"BUILDER={builder}", "-t", ref, "--push", *extra, str(context),
    )  # fmt: skip
    return timed_run(argv, timeout=STEP_TIMEOUT)


def _through_daemon(
    infra: BenchInfra, builder: str, contexts: list[Path], scratch: Path, into: Measured
) -> float | None:
    """The ten builds through a fresh daemon; then the trivial build's median time."""
    daemon = _Daemon(Path(tempfile.mkdtemp(prefix="ciday-daemon-", dir=scratch)))
    daemon.start()
    try:
        for n, context in enumerate(contexts):
            ref = f"{infra.wan.host}/bench/ciday-daemon-{n}:latest"
            done = _lazybuild_build([], builder, context, ref, "--builder", daemon.address)
            if not done.ok:
                into.failure = f"build {n}: {done.failure()}"
                return None
            into.walls.append(done.wall_s)
        base = _estargz_of(infra, infra.base_image("debian")).replace(
            infra.registry.host, infra.wan.host, 1
        )
        trivial = _trivial_context(scratch, base)
        times = []
        for _ in range(4):  # the first warms the base up
            argv = lazybuild_argv(
                "build", "--builder", daemon.address, "--progress=quiet", "--no-cache",
                "--network", "none", str(trivial),
            )  # fmt: skip
            done = timed_run(argv, timeout=STEP_TIMEOUT)
            if not done.ok:
                into.failure = f"trivial build: {done.failure()}"
                return None
            times.append(done.wall_s)
        return median(times[1:])
    finally:
        daemon.stop()


def _one_shot(
    infra: BenchInfra, builder: str, contexts: list[Path], scratch: Path, into: Measured
) -> None:
    state = Path(tempfile.mkdtemp(prefix="ciday-oneshot-", dir=scratch))
    try:
        for n, context in enumerate(contexts):
            ref = f"{infra.wan.host}/bench/ciday-oneshot-{n}:latest"
            done = _lazybuild_build(["--state-dir", str(state)], builder, context, ref)
            if not done.ok:
                into.failure = f"build {n}: {done.failure()}"
                return
            into.walls.append(done.wall_s)
    finally:
        subprocess.run(
            lazybuild_argv("--state-dir", str(state), "prune"), capture_output=True, check=False
        )


def _docker(infra: BenchInfra, builder: str, contexts: list[Path], into: Measured) -> None:
    dockerd = infra.dockerd
    env = {"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.config_dir)}
    refs = []
    try:
        for n, context in enumerate(contexts):
            ref = f"{infra.wan.host}/bench/ciday-docker-{n}:latest"
            refs.append(ref)
            build = timed_run(
                [DOCKER_CLI, "build", "-q", "--network", "none",
                 "--build-arg", f"BUILDER={builder}", "-f", str(context / LEGACY_DOCKERFILE),
                 "-t", ref, str(context)],
                env={**env, "DOCKER_BUILDKIT": "0"},
                timeout=STEP_TIMEOUT,
            )  # fmt: skip
            push = timed_run([DOCKER_CLI, "push", "-q", ref], env=env, timeout=STEP_TIMEOUT)
            if not (build.ok and push.ok):
                into.failure = f"build {n}: {(build if not build.ok else push).failure()}"
                return
            into.walls.append(build.wall_s + push.wall_s)
    finally:
        for args in (["rmi", "-f", *refs], ["container", "prune", "-f"],
                     ["image", "prune", "-a", "-f"], ["builder", "prune", "-a", "-f"]):  # fmt: skip
            dockerd.docker(*args, check=False)


def run(infra: BenchInfra, repeat: int = 1, *, wan: bool = True) -> Section:
    """One CI day per tool (ten builds each: ``repeat`` is not used, the day is the
    repetition)."""
    load_before = os.getloadavg()[0]
    images = _images(infra, BUILDER_OF)
    direct, host = infra.registry.host, infra.wan.host
    estargz = images.builder_estargz.replace(direct, host, 1)
    gzip = images.builder_gzip.replace(direct, host, 1)
    infra.dockerd  # noqa: B018 - started before the clock runs
    scratch = Path(tempfile.mkdtemp(prefix="ciday-", dir=infra.workdir))
    daemon = Measured("lazybuild build --builder (through `lazybuild serve`)")
    one_shot = Measured("lazybuild build (one-shot, one state dir)")
    docker = Measured("docker build (legacy builder) + docker push")
    trivial: float | None = None
    try:
        contexts = _variants(scratch)
        print("bench ciday: daemon", file=sys.stderr)
        trivial = _through_daemon(infra, estargz, contexts, scratch, daemon)
        print("bench ciday: one-shot", file=sys.stderr)
        _one_shot(infra, estargz, contexts, scratch, one_shot)
        print("bench ciday: docker", file=sys.stderr)
        _docker(infra, gzip, contexts, docker)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = [["tool", "10 builds + pushes", "first build", "median of the other 9",
              "ratio to docker"]]  # fmt: skip
    for measured in (daemon, one_shot, docker):
        ok = measured.failure is None and measured.walls
        table.append([
            measured.label if ok else f"{measured.label} (failed: {measured.failure})",
            seconds(measured.total),
            seconds(measured.walls[0]) if ok else "n/a",
            seconds(median(measured.walls[1:])) if ok else "n/a",
            ratio(measured.total, docker.total),
        ])  # fmt: skip
    notes = [
        verdict(
            f"The daemon's ten builds (≤ {TOTAL_GOAL} x docker's)",
            daemon.total / docker.total if daemon.total and docker.total else None,
            TOTAL_GOAL,
        ),
        verdict(
            f"A trivial build (`FROM debian`, `RUN true`, `--no-cache`) through the warm "
            f"daemon, in seconds (≤ {TRIVIAL_GOAL_S}), median of 3 after a warm-up: "
            f"{seconds(trivial)}",
            trivial,
            TRIVIAL_GOAL_S,
        ),
        "Per build (s): "
        + "; ".join(
            f"{m.label.split(' (')[0]}: " + ", ".join(f"{w:.1f}" for w in m.walls)
            for m in (daemon, one_shot, docker)
        ),
    ]
    return Section(
        name="ciday",
        title="ciday: a CI day in miniature, ten builds through the daemon",
        setup=[
            *describe(
                {
                    "lazybuild": lazybuild_argv("--version"),
                    "dockerd": ["/usr/sbin/dockerd", "--version"],
                    "registry": ["docker-registry", "--version"],
                }
            ),
            load_line(load_before),
            f"- Link: {WAN_DESCRIPTION} (every pull and push)",
            f"- Builds: {BUILDS} variants of `examples/{EXAMPLE_DIR}` (one string of "
            f"`{CHANGED_FILE}` differs, so each `go build` runs; GOCACHE and GOMODCACHE are "
            "cache mounts) on the golang builder (eStargz for lazybuild, gzip for docker), "
            "one after another, each pushed to a new repository; docker's legacy builder has "
            "no cache mounts and builds the Dockerfile without the `--mount` flags",
            "- The daemon is started (untimed) on a fresh state dir: its first build is cold; "
            "one-shot builds share a fresh state dir; docker starts with no image and keeps "
            "the base after its first pull",
        ],
        table=table,
        notes=notes,
    )
