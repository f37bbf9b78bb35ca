"""`rebuild`: warm rebuild, a CI runner's steady state, lazybuild against docker.

`lazybuild build --no-cache` of `examples/hello-go` in a state dir where earlier builds
of the same example left the builder's layers whole on the machine, against
`DOCKER_BUILDKIT=0 docker build --no-cache` (the legacy builder, on the private dockerd
the build benchmark uses) with the base image already pulled. Everything is on this
machine: the registry is on loopback, there is no WAN link, and each side had an
untimed warm-up build, so page caches are warm on both.

Besides the whole build, the `go build` step alone: lazybuild's RUN step from its
`--progress=rawjson` events (the vertex's started → completed), docker's from its
build output (the `Step N/M : RUN` line → the committed layer's id), against the same
command run with runc (with the spec lazybuild's executor writes) on an overlay of the
builder's root filesystem unpacked on local disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.build import (
    BUILDER_PACKAGES,
    EXAMPLES,
    EXAMPLES_DIR,
    RUNC,
    STEP_TIMEOUT,
    Example,
    Images,
    _check_output,
    _images,
    _release_state,
)
from bench.convert import lazybuild_argv
from bench.infra import LAYER_FORMAT_LINE, BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, data_size, mebibytes, ratio, seconds, seconds_list, verdict
from bench.timing import Timed, median, timed_run
from lazybuild.executor.limits import fit_rlimits
from lazybuild.executor.spec import ProcessSpec, generate_spec
from lazybuild.executor.users import ResolvedUser
from tests.support import procs, rootfs
from tests.support.dockerd import DOCKER_CLI

EXAMPLE: Example = next(example for example in EXAMPLES if example.name == "hello-go")
BUILD_GOAL = 1.0  # lazybuild warm rebuild / docker's, at most
STEP_GOAL = 1.05  # lazybuild's RUN step / the same command with runc on local disk, at most
WHOLE_IMAGE_BUILDS = 3  # warm-up builds at most, after the second, for whole layer images
ROOT = ResolvedUser(uid=0, gid=0, additional_gids=(), home="/root", name="root")


@dataclass
class Measured:
    """Repetitions of one tool; the report uses medians."""

    label: str
    wall: list[float] = field(default_factory=list)  # the whole command
    step: list[float] = field(default_factory=list)  # the RUN step alone
    fetched: list[int] = field(default_factory=list)  # lazybuild's fetch report
    reports: list[dict[str, Any]] = field(default_factory=list)  # lazybuild's fetch reports
    steps: list[list[tuple[str, float]]] = field(default_factory=list)  # lazybuild's vertices
    failure: str | None = None

    def fail(self, message: str) -> None:
        self.failure = self.failure or message

    def median_of(self, values: list[float]) -> float | None:
        return median(values) if self.failure is None and values else None


@dataclass
class Setup:
    """What every repetition needs."""

    infra: BenchInfra
    images: Images
    state: Path  # lazybuild's warm state dir
    n: int = 0

    @property
    def context(self) -> Path:
        return EXAMPLES_DIR / EXAMPLE.name

    def docker_ref(self) -> str:
        return f"{self.infra.registry.host}/bench/rebuild-docker-{self.n}:latest"


# --- lazybuild ----------------------------------------------------------------------------


def _lazybuild_build(setup: Setup, report: Path, *options: str) -> Timed:
    argv = [
        sys.executable, "-m", "lazybuild", "--state-dir", str(setup.state),
        "build", "--network", "none", "--build-arg", f"BUILDER={setup.images.builder_estargz}",
        "--fetch-report", str(report), *options, str(setup.context),
    ]  # fmt: skip
    env = {"XDG_CACHE_HOME": str(setup.state / "xdg-cache")}
    return timed_run(argv, env=env, timeout=STEP_TIMEOUT)


def _vertices(events: str) -> list[tuple[str, float, bool]]:
    """(name, seconds, cached) of every completed vertex in `--progress=rawjson` output."""
    done = []
    for line in events.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "completed":
            seconds_taken = float(event["completed"]) - float(event["started"])
            done.append((str(event["name"]), seconds_taken, bool(event.get("cached"))))
    return done


def _lazybuild(setup: Setup, into: Measured) -> None:
    report = setup.state / f"fetch-report-{setup.n}.json"
    done = _lazybuild_build(setup, report, "--no-cache", "--progress=rawjson")
    if not done.ok:
        into.fail(done.failure())
        return
    vertices = _vertices(done.stderr)
    step = [v for v in vertices if v[0].endswith(f"RUN {EXAMPLE.run}")]
    if len(step) != 1 or step[0][2]:
        into.fail(f"no single uncached `RUN {EXAMPLE.run}` in the rawjson events: {step}")
        return
    into.wall.append(done.wall_s)
    into.step.append(step[0][1])
    data = json.loads(report.read_text())
    into.fetched.append(int(data["bytes_fetched"]))
    into.reports.append(data)
    into.steps.append([(name, secs) for name, secs, _ in vertices])


# --- docker -------------------------------------------------------------------------------


def _docker_env(infra: BenchInfra) -> dict[str, str]:
    dockerd = infra.dockerd
    return {"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.config_dir)}


def _timed_lines(
    argv: list[str], env: dict[str, str], timeout: float
) -> tuple[Timed, list[tuple[float, str]]]:
    """Run `argv` to completion, stdout and stderr together, each line with the seconds
    since the start at which it arrived."""
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        returncode = process.wait()
    finally:
        watchdog.cancel()
    wall = time.monotonic() - started
    output = "\n".join(line for _, line in lines)
    return Timed(argv, wall, 0.0, returncode, output, ""), lines


_LAYER_ID = re.compile(r"^ ---> [0-9a-f]{12}$")


def _docker_step(lines: list[tuple[float, str]]) -> float | None:
    """Seconds from the legacy builder's `Step N/M : RUN <command>` line to the id of the
    layer it committed."""
    begun: float | None = None
    for at, line in lines:
        if begun is None:
            if line.startswith("Step ") and line.endswith(f": RUN {EXAMPLE.run}"):
                begun = at
        elif _LAYER_ID.match(line):
            return at - begun
    return None


def _docker_build(setup: Setup, ref: str) -> tuple[Timed, float | None]:
    argv = [
        DOCKER_CLI, "build", "--no-cache", "--network", "none",
        "--build-arg", f"BUILDER={setup.images.builder_gzip}", "-t", ref, str(setup.context),
    ]  # fmt: skip
    env = {**_docker_env(setup.infra), "DOCKER_BUILDKIT": "0"}
    done, lines = _timed_lines(argv, env, STEP_TIMEOUT)
    return done, _docker_step(lines)


def _docker_cleanup(infra: BenchInfra, ref: str) -> None:
    """Remove the built image and its intermediate images; the base image stays."""
    dockerd = infra.dockerd
    dockerd.docker("rmi", "-f", ref, check=False)
    dockerd.docker("container", "prune", "-f", check=False)
    dockerd.docker("image", "prune", "-f", check=False)


def _docker(setup: Setup, into: Measured) -> None:
    ref = setup.docker_ref()
    try:
        done, step = _docker_build(setup, ref)
    finally:
        _docker_cleanup(setup.infra, ref)
    if not done.ok:
        into.fail(done.failure())
        return
    if step is None:
        into.fail(f"no `Step N/M : RUN {EXAMPLE.run}` followed by a layer id in the output")
        return
    into.wall.append(done.wall_s)
    into.step.append(step)


# --- the same step with runc on local disk ------------------------------------------------


def _native_run(setup: Setup, *, check: bool = False) -> tuple[Timed, str]:
    """`runc run` of the example's RUN command on a fresh overlay of the builder's root
    filesystem (unpacked by debootstrap on local disk) with the example's files in its
    working dir: the timed run, and with `check` what the built program printed."""
    lower = rootfs.debootstrap_rootfs("minbase", BUILDER_PACKAGES[EXAMPLE.builder])
    scratch = Path(tempfile.mkdtemp(prefix=f"native-{setup.n}-", dir=setup.infra.workdir))
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    bundle, runc_root = scratch / "bundle", scratch / "runc"
    for directory in (upper, work, merged, bundle, runc_root):
        directory.mkdir()
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    container = f"lazybuild-bench-native-{os.getpid()}-{setup.n}"
    try:
        target = merged / EXAMPLE.copy_to.lstrip("/")
        shutil.copytree(EXAMPLES_DIR / EXAMPLE.name, target, dirs_exist_ok=True)
        (target / "Dockerfile").unlink()
        process = ProcessSpec(
            args=["/bin/sh", "-c", EXAMPLE.run],
            env=[f"{key}={value}" for key, value in EXAMPLE.env.items()],
            cwd=EXAMPLE.workdir,
            user=ROOT,
        )
        spec = generate_spec(rootfs=merged, process=process, hostname="native", network="none")
        spec = fit_rlimits(spec)
        spec["linux"]["cgroupsPath"] = f"lazybuild-bench/{container}"
        (bundle / "config.json").write_text(json.dumps(spec))
        done = timed_run(
            [RUNC, "--root", str(runc_root), "run", "--bundle", str(bundle), container],
            timeout=STEP_TIMEOUT,
        )
        printed = ""
        if done.ok and check:
            binary = merged / "out" / "hello"
            shown = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
            printed = shown.stdout.strip()
        return done, printed
    finally:
        subprocess.run(
            [RUNC, "--root", str(runc_root), "delete", "--force", container],
            capture_output=True,
            check=False,
        )
        subprocess.run(["umount", "-l", str(merged)], check=False)
        procs.unmount_all_under(scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _native(setup: Setup, into: Measured) -> None:
    done, _ = _native_run(setup)
    if not done.ok:
        into.fail(done.failure())
        return
    into.wall.append(done.wall_s)
    into.step.append(done.wall_s)


# --- warming up: untimed, and where the output is checked ---------------------------------


@dataclass
class Warmup:
    lazybuild: Timed | None = None
    lazybuild_fetched: int | None = None
    # The second, `--no-cache` like the timed ones: what the first left uncached.
    second: Timed | None = None
    second_fetched: int | None = None
    extra_builds: int = 0  # more `--no-cache` builds until every layer was whole
    checks: dict[str, str] = field(default_factory=dict)  # tool -> problem, "" if fine


def _warm_up(setup: Setup) -> Warmup:
    warm = Warmup()
    infra = setup.infra
    # lazybuild: the first build in the state dir fetches what the build reads; pushed,
    # so that its result can be checked.
    ref = f"{infra.registry.host}/bench/rebuild-lazybuild:warm-up"
    report = setup.state / "fetch-report-warm-up.json"
    done = _lazybuild_build(setup, report, "--progress=plain", "-t", ref, "--push")
    if not done.ok:
        raise RuntimeError(f"the warm-up lazybuild build failed: {done.failure()}")
    warm.lazybuild = done
    warm.lazybuild_fetched = int(json.loads(report.read_text())["bytes_fetched"])
    warm.checks["lazybuild"] = _check_output(infra, ref, EXAMPLE)
    # A first `--no-cache` rebuild still fetched a chunk the first build had not (one of
    # net/http.a, 708 KiB, in the smoke runs); the steady state starts after it.
    report = setup.state / "fetch-report-warm-up-2.json"
    done = _lazybuild_build(setup, report, "--progress=plain", "--no-cache")
    if not done.ok:
        raise RuntimeError(f"the second warm-up lazybuild build failed: {done.failure()}")
    warm.second = done
    warm.second_fetched = int(json.loads(report.read_text())["bytes_fetched"])
    # The steady state: a layer whose chunks are all cached gets its whole image kept
    # while a build runs (after the background fetch), and later builds mount that.
    # A build that ends first leaves it to the next one.
    for extra in range(WHOLE_IMAGE_BUILDS):
        if not any(layer["mode"] == "lazy" for layer in json.loads(report.read_text())["layers"]):
            break
        report = setup.state / f"fetch-report-warm-up-{3 + extra}.json"
        done = _lazybuild_build(setup, report, "--progress=plain", "--no-cache")
        if not done.ok:
            raise RuntimeError(f"a warm-up lazybuild build failed: {done.failure()}")
        warm.extra_builds += 1
    # docker: pull the base image, then one build, run.
    infra.dockerd.docker("pull", "-q", setup.images.builder_gzip)
    ref = f"{infra.registry.host}/bench/rebuild-docker:warm-up"
    try:
        done, _ = _docker_build(setup, ref)
        if not done.ok:
            raise RuntimeError(f"the warm-up docker build failed: {done.failure()}")
        shown = timed_run(
            [DOCKER_CLI, "run", "--rm", "--network", "none", ref],
            env=_docker_env(infra),
            timeout=120,
        )
        warm.checks["docker"] = _printed_problem(shown)
    finally:
        _docker_cleanup(infra, ref)
    # runc on local disk.
    done, printed = _native_run(setup, check=True)
    if not done.ok:
        raise RuntimeError(f"the warm-up runc run failed: {done.failure()}")
    if printed != EXAMPLE.expected:
        warm.checks["runc"] = f"the built program printed {printed!r}"
    else:
        warm.checks["runc"] = ""
    return warm


def _wall(done: Timed | None) -> str:
    return "n/a" if done is None else f"{done.wall_s:.1f} s"


def _per_layer(report: dict[str, Any]) -> str:
    return "; ".join(
        f"{layer['digest'][7:19]} ({layer['mode']}, {data_size(int(layer['size']))}): "
        f"{data_size(int(layer['bytes_fetched']))} in {layer['requests']} requests"
        for layer in report["layers"]
    )


def _printed_problem(shown: Timed) -> str:
    if not shown.ok:
        return shown.failure()
    if shown.stdout.strip() != EXAMPLE.expected:
        return f"printed {shown.stdout.strip()!r}"
    return ""


# --- the section --------------------------------------------------------------------------


TOOLS: list[tuple[str, str, Callable[[Setup, Measured], None]]] = [
    ("lazybuild", "lazybuild build --no-cache (every chunk cached)", _lazybuild),
    ("docker", "docker build --no-cache (legacy builder, base image local)", _docker),
    ("runc", "runc run on local disk (step only)", _native),
]


def run(infra: BenchInfra, repeat: int = 3, *, wan: bool = True) -> Section:
    del wan  # the steady state has everything local: loopback only
    load_before = os.getloadavg()[0]
    infra.dockerd  # noqa: B018 - started before the clock runs, not inside a repetition
    images = _images(infra, EXAMPLE)
    state = Path(tempfile.mkdtemp(prefix="rebuild-", dir=infra.workdir))
    measured = {name: Measured(label) for name, label, _ in TOOLS}
    try:
        setup = Setup(infra, images, state)
        warm = _warm_up(setup)
        for n in range(repeat):
            # Interleaved, and each repetition starts with the next tool, so that drift
            # in the machine's speed and the order affect the tools alike.
            setup.n = n
            for name, _, measure in TOOLS[n % len(TOOLS) :] + TOOLS[: n % len(TOOLS)]:
                print(f"bench rebuild: {name} #{n}", file=sys.stderr, flush=True)
                measure(setup, measured[name])
    finally:
        _release_state(state)
        infra.dockerd.docker("rmi", "-f", images.builder_gzip, check=False)
    return _section(
        infra,
        images=images,
        repeat=repeat,
        load_before=load_before,
        warm=warm,
        measured=measured,
    )


def _section(
    infra: BenchInfra,
    *,
    images: Images,
    repeat: int,
    load_before: float,
    warm: Warmup,
    measured: dict[str, Measured],
) -> Section:
    lazy, docker, native = measured["lazybuild"], measured["docker"], measured["runc"]
    lazy_build, docker_build = lazy.median_of(lazy.wall), docker.median_of(docker.wall)
    lazy_step, docker_step = lazy.median_of(lazy.step), docker.median_of(docker.step)
    native_step = native.median_of(native.step)
    step_name = f"`RUN {EXAMPLE.run}` step alone"
    rows = [
        ["what is timed", "tool", f"time (median of {repeat})", "ratio", "to"],
        ["whole build", lazy.label, seconds(lazy_build), ratio(lazy_build, docker_build), "docker"],
        ["whole build", docker.label, seconds(docker_build), ratio(docker_build, docker_build), ""],
        [
            step_name,
            "lazybuild (rawjson: RUN vertex started → completed)",
            seconds(lazy_step),
            ratio(lazy_step, native_step),
            "runc on local disk",
        ],
        [
            step_name,
            "docker (output: `Step N/M : RUN` line → committed layer id)",
            seconds(docker_step),
            ratio(docker_step, native_step),
            "runc on local disk",
        ],
        [
            step_name,
            "runc run, overlay of the unpacked builder rootfs on local disk",
            seconds(native_step),
            ratio(native_step, native_step),
            "",
        ],
    ]
    notes = [
        verdict(
            f"Warm rebuild (lazybuild ≤ {BUILD_GOAL} x docker build --no-cache)",
            lazy_build / docker_build if lazy_build and docker_build else None,
            BUILD_GOAL,
        ),
        verdict(
            f"The go build step alone (lazybuild ≤ {STEP_GOAL} x the same command with runc "
            "on local disk)",
            lazy_step / native_step if lazy_step and native_step else None,
            STEP_GOAL,
        ),
    ]
    for m in measured.values():
        if m.failure:
            notes.append(f"**{m.label} failed**: {m.failure}")
    fetched = [data_size(value) for value in lazy.fetched]
    if warm.lazybuild is not None:
        notes.append(
            f"Warm-up (untimed): the first lazybuild build in the state dir, from the eStargz "
            f"builder over loopback with `--push`, took {warm.lazybuild.wall_s:.1f} s and "
            f"fetched {data_size(warm.lazybuild_fetched)}; a second one, with `--no-cache`, "
            f"took {_wall(warm.second)} and fetched {data_size(warm.second_fetched)}"
            + (
                f", and {warm.extra_builds} more until every layer had its whole image; the "
                if warm.extra_builds
                else "; the "
            )
            + f"timed `--no-cache` rebuilds after them fetched {', '.join(fetched) or 'n/a'} "
            "(fetch report, per repetition)"
            + (
                f"; first timed repetition per layer: {_per_layer(lazy.reports[0])}."
                if lazy.reports
                else "."
            )
        )
    if lazy.steps:
        slowest = sorted(lazy.steps[0], key=lambda item: -item[1])[:4]
        notes.append(
            "Where lazybuild's time goes (first timed repetition, rawjson vertices): "
            + "; ".join(f"`{name}` {secs:.2f} s" for name, secs in slowest)
            + f"; the whole command {lazy.wall[0]:.1f} s. The RUN vertex covers mounting "
            "the builder's layers, the container's run and committing its layer (the Go "
            "build cache in /tmp/gocache is part of it); the runc figure is the run alone, "
            "on an overlay mounted beforehand, nothing committed."
        )
    notes.append(
        "Times per repetition: "
        + "; ".join(
            f"{name} build {seconds_list(m.wall, 1)}, step {seconds_list(m.step, 1)}"
            if name != "runc"
            else f"{name} step {seconds_list(m.step, 1)}"
            for name, m in measured.items()
        )
        + "."
    )
    checks = "; ".join(
        f"{tool}: {'ok' if not problem else '**failed**: ' + problem}"
        for tool, problem in warm.checks.items()
    )
    notes.append(
        f"Output check on the warm-up builds (the built program prints `{EXAMPLE.expected}`; "
        f"lazybuild's pushed image run with `lazybuild run`, docker's with `docker run`, "
        f"runc's binary run directly): {checks}."
    )
    builder_layers = len(infra.manifest(images.builder_gzip)["layers"])
    setup = describe(
        {
            "lazybuild": lazybuild_argv("--version"),
            "dockerd": ["/usr/sbin/dockerd", "--version"],
            "runc": [RUNC, "--version"],
            "registry": ["docker-registry", "--version"],
        }
    )
    setup += [
        load_line(load_before),
        "- Link: loopback only (docker-registry on 127.0.0.1; no WAN proxy): the steady "
        "state, with the base image and every chunk already on the machine",
        f"- Example: `examples/{EXAMPLE.name}` (`{EXAMPLE.run}` of a program using net/http, "
        "net/http/httptest and encoding/json, CGO_ENABLED=0, GOCACHE in /tmp, in the "
        "golang builder; static binary copied onto scratch)",
        f"- Builder: Debian bookworm minbase + golang-go (Go 1.19), {builder_layers} layers; "
        f"gzip {mebibytes(infra.compressed_size(images.builder_gzip))} (docker), eStargz by "
        f"`lazybuild convert` {mebibytes(infra.compressed_size(images.builder_estargz))} "
        "(lazybuild)",
        LAYER_FORMAT_LINE,
        "- lazybuild: one state dir; an untimed first build (`lazybuild --state-dir S build "
        "--network none --build-arg BUILDER=<eStargz> -t REF --push CTX`) caches what the "
        "build reads, and untimed `--no-cache` ones after it (a base layer built on again "
        "is fetched whole in the background and kept as a whole EROFS image, which later "
        "builds mount with no request and no FUSE read: `local` in the fetch report) until "
        "every layer is local; each repetition is "
        "`lazybuild --state-dir S build --no-cache --progress=rawjson --network none "
        "--build-arg BUILDER=<eStargz> --fetch-report F CTX` (no output: the result "
        "stays in the build cache, as docker's stays in its image store)",
        "- docker: private dockerd (own data root, overlay2, no bridge), base image pulled "
        "before; an untimed first build, then per repetition `DOCKER_BUILDKIT=0 docker "
        "build --no-cache --network none --build-arg BUILDER=<gzip> -t REF CTX`, then "
        "`docker rmi -f REF` and `docker container prune -f`, `docker image prune -f` "
        "(the base image stays)",
        "- runc on local disk: the builder's root filesystem as debootstrap unpacked it "
        "(the same files the image's layers hold) as the lower dir of a fresh overlayfs on "
        "the same disk, the example's files copied in, then `runc run` of `/bin/sh -c "
        f"'{EXAMPLE.run}'` with the example's ENV and WORKDIR, the OCI spec lazybuild's "
        "executor writes (Docker's defaults, network none); only `runc run` is timed",
        "- Page caches are not dropped: each side's untimed first build warmed them, as "
        "the builds before it warm a CI runner's",
        "- Repetitions interleave the three, each starting with the next one in turn; "
        "figures are medians.",
    ]
    return Section(
        name="rebuild",
        title="rebuild: warm `--no-cache` rebuild on loopback, lazybuild vs docker, and "
        "the go build step vs local disk",
        setup=setup,
        table=rows,
        notes=notes,
    )
