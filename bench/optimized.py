"""`optimized`: start-up of images lazybuild builds, plain gzip vs eStargz vs optimized.

In the manner of the HelloBench runs of stargz-snapshotter: the time from nothing on
the machine to the program's exit (a short-lived program) or to its ready line (a
server), split into pull, create and run, over the emulated WAN link. Two examples,
each built by `lazybuild build` (outside the timing, on the registry's direct host):

- `examples/hello-python`: a Python program that imports a few standard modules and
  prints one line, on the python3 base image;
- `examples/server-go`: a Go net/http server, compiled in the golang builder and
  copied onto the Debian base image, that prints `ready: ...` once it listens;
- `examples/server-java`: a JVM HTTP server (the JDK's own), compiled in the build on
  the JRE image, with the same ready line.

Four versions of each, all run from the registry through the link:

- plain gzip: built on the gzip base image, written as a docker tarball, loaded into
  a private dockerd and `docker push`ed (so its layers are docker's own gzip); run
  with `docker pull` + `docker create` + `docker start -a`, image removed after each
  repetition;
- eStargz: `lazybuild build --no-optimize --push` on the eStargz base image;
- eStargz optimized: `lazybuild build --push` (the default: the image's workload is
  profiled and the layers the build made are written with what it read first; the
  record is published with the image, and `lazybuild run` prefetches the files it
  lists in the base layers too; the servers with `--workload-ready ready`);
- eStargz optimized with `--optimize-base`: the same, with the base image's layers
  rewritten too.

The eStargz versions are run with `lazybuild --state-dir NEW run`, a fresh state dir
per repetition.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chart import Bar, Panel, matplotlib_missing, stacked_bars
from bench.infra import MANIFEST_ACCEPT, WAN_DESCRIPTION, BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, data_size, mebibytes, ratio, seconds, seconds_list, verdict
from bench.timing import median, timed_run
from tests.support import imagebuild, procs, rootfs
from tests.support.dockerd import DOCKER_CLI

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
CHART = Path(__file__).resolve().parent.parent / "docs" / "bench-optimized.png"
LAZYBUILD = [sys.executable, "-m", "lazybuild"]
OPTIMIZED_VS_ESTARGZ_GOAL = 0.5  # server image: optimized / unoptimized eStargz, at most
OPTIMIZED_VS_GZIP_GOAL = 0.25  # server image: optimized / plain gzip, at most
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
RUN_TIMEOUT = 180.0
BUILD_TIMEOUT = 1800.0
RUNNING = re.compile(r"^\[\s*[\d.]+s\] running \[")  # lazybuild run: mounted, starting


@dataclass(frozen=True)
class Example:
    name: str  # directory under examples/
    kind: str  # what the chart calls it
    base_arg: str  # the build arg naming the runtime base image
    base: str  # "python" or a BenchInfra.BASE_IMAGES key
    builder: str | None  # BASE_IMAGES key of the BUILDER build arg (eStargz), if any
    expected: str  # what it prints: its only line, or its ready line
    ready: str | None  # a server: the regex of its ready line (None: runs to exit)


EXAMPLES = [
    Example(
        name="hello-python",
        kind="short-lived: python3 hello.py",
        base_arg="BASE",
        base="python",
        builder=None,
        expected="hello from a Python program built by lazybuild (x86_64)",
        ready=None,
    ),
    Example(
        name="server-go",
        kind="server: Go net/http, until ready",
        base_arg="RUNTIME",
        base="debian",
        builder="golang",
        expected="ready: listening on http://127.0.0.1:8080",
        ready="ready",
    ),
    Example(
        name="server-java",
        kind="server: JVM com.sun.net.httpserver, until ready",
        base_arg="JRE",
        base="jre",
        builder=None,
        expected="ready: listening on http://127.0.0.1:8080",
        ready="ready",
    ),
]


@dataclass(frozen=True)
class Mode:
    key: str  # tag of the image, and the key of its measurements
    label: str  # table row
    short: str  # chart label
    docker: bool  # run with docker (pull, create, start) rather than lazybuild run


MODES = [
    Mode("gzip", "plain gzip: docker pull + create + start", "plain gzip\n(docker)", docker=True),
    Mode(
        "estargz", "eStargz, not optimized: lazybuild run", "eStargz\n(lazybuild run)", docker=False
    ),
    Mode(
        "optimized",
        "eStargz, optimized by lazybuild build: lazybuild run",
        "eStargz optimized\n(lazybuild run)",
        docker=False,
    ),
    Mode(
        "optimized-base",
        "eStargz, optimized by lazybuild build --optimize-base (base layers too): lazybuild run",
        "optimized with\n--optimize-base",
        docker=False,
    ),
]
OPTIMIZED_MODES = ("optimized", "optimized-base")
WARM = "optimized-warm"  # the optimized image run again in the same state dir
WARM_LABEL = "eStargz optimized, warm: second run in the same state dir (nothing to fetch)"


@dataclass
class Measured:
    """Repetitions of one mode on one example; the report uses medians."""

    phases: list[dict[str, float]] = field(default_factory=list)  # pull, create, run
    wire: list[int] = field(default_factory=list)  # bytes the proxy delivered to the client
    fetched: list[int] = field(default_factory=list)  # lazybuild's fetch report
    requests: list[int] = field(default_factory=list)  # lazybuild's fetch report
    reports: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None

    def fail(self, message: str) -> None:
        self.failure = self.failure or message

    @property
    def totals(self) -> list[float]:
        return [sum(phases.values()) for phases in self.phases]

    @property
    def total_median(self) -> float | None:
        return median(self.totals) if self.failure is None and self.phases else None

    def median_phases(self) -> dict[str, float]:
        """The phases of the median repetition (lower middle for an even count), so
        that a stacked bar's height is the median total."""
        if not self.phases:
            return {}
        order = sorted(range(len(self.phases)), key=lambda i: self.totals[i])
        return self.phases[order[(len(order) - 1) // 2]]

    def int_median(self, values: list[int]) -> int | None:
        value = median(values)
        return None if value is None or self.failure is not None else int(value)


# --- images ---------------------------------------------------------------------------


def _convert(infra: BenchInfra, src: str, dst: str) -> None:
    with tempfile.TemporaryDirectory(dir=infra.workdir) as scratch:
        env = {"XDG_CACHE_HOME": f"{scratch}/cache", "DOCKER_CONFIG": f"{scratch}/docker"}
        argv = [*LAZYBUILD, "-q", "convert", "--tmpdir", scratch, src, dst]
        done = timed_run(argv, env=env, timeout=BUILD_TIMEOUT)
    if not done.ok:
        raise RuntimeError(f"converting {src} failed: {done.failure()}")


def _base_images(infra: BenchInfra, name: str) -> tuple[str, str]:
    """Base image `name` as plain gzip and as eStargz (`lazybuild convert`), direct host."""
    if name == "python":
        # The image the startup benchmark uses: minbase + python3, in 3 layers.
        layout = imagebuild.cached_rootfs_image(
            rootfs.debootstrap_rootfs("minbase", rootfs.PYTHON_PACKAGES)
        )
        imagebuild.push_oci_layout(layout, infra.registry.host, "bench/python", "gzip")
        gzip_ref = f"{infra.registry.host}/bench/python:gzip"
    else:
        gzip_ref = infra.base_image(name)
    estargz_ref = gzip_ref.rsplit(":", 1)[0] + ":estargz"
    _convert(infra, gzip_ref, estargz_ref)
    return gzip_ref, estargz_ref


@dataclass(frozen=True)
class ImageFacts:
    layers: int
    size: int  # compressed, the sum of the layer sizes
    estargz: int  # layers with a TOC
    prefetch: int  # layers with a prefetch region (".prefetch.landmark")
    prefetch_bytes: int  # compressed size of the prefetch regions
    digests: tuple[str, ...] = ()  # the layers, bottom first
    prefetch_by_layer: dict[str, int] = field(default_factory=dict)  # digest -> bytes


def _image_manifest_ref(ref: str) -> str:
    """`ref` if it names an image manifest; for an index (a pushed build with its workload
    record attached), its image manifest for a platform, by digest: `lazybuild inspect`
    cannot probe the record artifact's blob as a layer."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    accept = ", ".join([INDEX_MEDIA_TYPE, *MANIFEST_ACCEPT.split(", ")])
    response = httpx.get(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=30
    )
    response.raise_for_status()
    document = response.json()
    if "manifests" not in document:
        return ref
    for entry in document["manifests"]:
        platform = entry.get("platform") or {}
        if platform.get("os") not in (None, "unknown") and not entry.get("artifactType"):
            return f"{host}/{repo}@{entry['digest']}"
    raise RuntimeError(f"{ref}: its index has no image manifest for a platform")


def _image_facts(ref: str) -> ImageFacts:
    """`lazybuild inspect --json` of `ref` (of its image manifest, for an index)."""
    target = _image_manifest_ref(ref)
    done = timed_run([*LAZYBUILD, "-q", "inspect", "--json", target], timeout=300)
    if not done.ok:
        raise RuntimeError(f"inspecting {target} failed: {done.failure()}")
    (manifest,) = json.loads(done.stdout)["manifests"]
    layers = manifest["layers"]
    tocs = [layer["toc"] for layer in layers if layer.get("toc")]
    prefetching = [toc for toc in tocs if toc.get("landmark") == "prefetch"]
    return ImageFacts(
        layers=len(layers),
        size=sum(int(layer["size"]) for layer in layers),
        estargz=len(tocs),
        prefetch=len(prefetching),
        prefetch_bytes=sum(int(toc.get("prefetchBytes") or 0) for toc in prefetching),
        digests=tuple(str(layer["digest"]) for layer in layers),
        prefetch_by_layer={
            str(layer["digest"]): int(layer["toc"].get("prefetchBytes") or 0)
            for layer in layers
            if layer.get("toc") and layer["toc"].get("landmark") == "prefetch"
        },
    )


@dataclass
class Built:
    """One example's images on the registry's direct host, by mode key."""

    refs: dict[str, str]
    bases: tuple[str, str]  # gzip, eStargz
    builder: str | None
    profile: str = ""  # the optimized build's workload profile lines
    profile_base: str = ""  # the same for the --optimize-base build
    facts: dict[str, ImageFacts] = field(default_factory=dict)  # by mode key


def _lazybuild_build(
    infra: BenchInfra, example: Example, state: Path, base: str, builder: str | None,
    *options: str,
) -> str:  # fmt: skip
    args = ["--build-arg", f"{example.base_arg}={base}"]
    if builder is not None:
        args += ["--build-arg", f"BUILDER={builder}"]
    argv = [
        *LAZYBUILD, "--state-dir", str(state), "build", "--progress=plain",
        "--network", "none", *args, *options, str(EXAMPLES_DIR / example.name),
    ]  # fmt: skip
    done = timed_run(argv, env={"XDG_CACHE_HOME": str(state / "xdg-cache")}, timeout=BUILD_TIMEOUT)
    if not done.ok:
        raise RuntimeError(f"building {example.name} failed: {done.failure()}")
    return done.stderr + done.stdout


def _build_images(infra: BenchInfra, example: Example) -> Built:
    """Build the example four ways, outside the timing."""
    direct = infra.registry.host
    gzip_base, estargz_base = _base_images(infra, example.base)
    builder = _base_images(infra, example.builder)[1] if example.builder else None
    repo = f"{direct}/bench/optimized-{example.name}"
    refs = {mode.key: f"{repo}:{mode.key}" for mode in MODES}
    ready = ["--workload-ready", example.ready] if example.ready else []
    built = Built(refs, (gzip_base, estargz_base), builder)
    state = Path(tempfile.mkdtemp(prefix=f"optimized-build-{example.name}-", dir=infra.workdir))
    try:
        _lazybuild_build(
            infra, example, state, estargz_base, builder,
            "--no-optimize", "-t", refs["estargz"], "--push",
        )  # fmt: skip
        log = _lazybuild_build(
            infra, example, state, estargz_base, builder, *ready, "-t", refs["optimized"], "--push"
        )
        built.profile = "\n".join(line for line in log.splitlines() if "workload profile:" in line)
        # Plain gzip: the same Dockerfile on the gzip base, loaded into dockerd, which
        # compresses the layers itself when it pushes them.
        tarball = state / "gzip.tar"
        _lazybuild_build(
            infra, example, state, gzip_base, builder,
            "-o", f"type=docker,dest={tarball},name={refs['gzip']}",
        )  # fmt: skip
        dockerd = infra.dockerd
        dockerd.docker("load", "-q", "-i", str(tarball))
        dockerd.docker("push", "-q", refs["gzip"])
        _remove_docker_images(infra)
        # Base layers too: the whole image rewritten with what start-up reads first.
        log = _lazybuild_build(
            infra, example, state, estargz_base, builder, *ready, "--optimize-base",
            "-t", refs["optimized-base"], "--push",
        )  # fmt: skip
        built.profile_base = "\n".join(
            line for line in log.splitlines() if "workload profile:" in line
        )
    finally:
        _release_state(state)
    built.facts = {key: _image_facts(ref) for key, ref in refs.items()}
    return built


# --- running -----------------------------------------------------------------------------


@dataclass
class Watched:
    """One command watched line by line: when lines arrived, relative to its start."""

    returncode: int | None = None
    marker_at: float | None = None  # the first stderr line matching the marker
    ready_at: float | None = None  # the first stdout line matching the ready regex
    ended_at: float | None = None
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    timed_out: bool = False

    def tail(self) -> str:
        return "\n".join((self.stderr + self.stdout)[-10:])


def _watch(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    marker: re.Pattern[str] | None = None,
    ready: re.Pattern[str] | None = None,
    on_ready: Any = None,
    timeout: float = RUN_TIMEOUT,
) -> Watched:
    """Run `argv` to its end, noting when `marker` appears on stderr and `ready` on
    stdout; `on_ready(process)` is called once at the ready line (to stop a server)."""
    watched = Watched()
    lines: queue.Queue[tuple[str, str | None, float]] = queue.Queue()
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )

    def pump(name: str, stream: Any) -> None:
        for line in stream:
            lines.put((name, line.rstrip("\n"), time.monotonic() - started))
        lines.put((name, None, time.monotonic() - started))

    threads = [
        threading.Thread(target=pump, args=(name, stream), daemon=True)
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for thread in threads:
        thread.start()
    open_streams = 2
    deadline = started + timeout
    while open_streams:
        try:
            name, line, at = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            watched.timed_out = True
            process.kill()
            break
        if line is None:
            open_streams -= 1
            continue
        if name == "stdout":
            watched.stdout.append(line)
            if ready is not None and watched.ready_at is None and ready.search(line):
                watched.ready_at = at
                if on_ready is not None:
                    on_ready(process)
        else:
            watched.stderr.append(line)
            if marker is not None and watched.marker_at is None and marker.search(line):
                watched.marker_at = at
    try:
        watched.returncode = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        watched.returncode = process.wait()
    watched.ended_at = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=5)
    return watched


def _check_output(example: Example, watched: Watched) -> str | None:
    """A problem with what the program printed, or None."""
    if watched.timed_out:
        return f"no {'ready line' if example.ready else 'exit'} within {RUN_TIMEOUT:.0f} s"
    if example.ready is not None:
        if watched.ready_at is None:
            return f"no ready line (exit {watched.returncode}):\n\n```\n{watched.tail()}\n```"
        if example.expected not in watched.stdout:
            return f"printed {watched.stdout!r}, not {example.expected!r}"
        return None
    if watched.returncode != 0:
        return f"exited {watched.returncode}:\n\n```\n{watched.tail()}\n```"
    if watched.stdout != [example.expected]:
        return f"printed {watched.stdout!r}, not {example.expected!r}"
    return None


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)


def _release_state(state: Path) -> None:
    """Free a lazybuild state dir: its caches, and any mount a failed run left."""
    subprocess.run(
        [*LAZYBUILD, "-q", "--state-dir", str(state), "prune"], capture_output=True, check=False
    )
    procs.unmount_all_under(state)
    shutil.rmtree(state, ignore_errors=True)


def _lazybuild_run(
    infra: BenchInfra,
    example: Example,
    ref: str,
    n: int,
    into: Measured,
    *,
    warm: Measured | None = None,
) -> None:
    """A cold run (new state dir) into `into`; with `warm`, then a second run in the same
    state dir (every chunk cached: what is left is lazybuild run's own start-up)."""
    state = Path(tempfile.mkdtemp(prefix=f"optimized-run-{n}-", dir=infra.workdir))
    try:
        if _lazybuild_run_in(infra, example, ref, state, into) and warm is not None:
            _lazybuild_run_in(infra, example, ref, state, warm)
    finally:
        _release_state(state)


def _lazybuild_run_in(
    infra: BenchInfra, example: Example, ref: str, state: Path, into: Measured
) -> bool:
    report = state / f"fetch-report-{time.monotonic_ns()}.json"
    ready = re.compile(example.ready) if example.ready else None
    infra.wan.reset_counters()
    watched = _watch(
        [*LAZYBUILD, "--state-dir", str(state), "run", "--network", "none",
         "--fetch-report", str(report), ref],
        env={"XDG_CACHE_HOME": str(state / "xdg-cache")},
        marker=RUNNING,
        ready=ready,
        on_ready=_stop,
    )  # fmt: skip
    wire = infra.wan.bytes_to_client
    problem = _check_output(example, watched)
    if problem is None and watched.marker_at is None:
        problem = f"no `running [...]` progress line:\n\n```\n{watched.tail()}\n```"
    if problem is None and not report.exists():
        problem = f"no fetch report written:\n\n```\n{watched.tail()}\n```"
    if problem is not None:
        into.fail(f"`lazybuild run {ref}` {problem}")
        return False
    assert watched.marker_at is not None
    end = watched.ready_at if example.ready else watched.ended_at
    assert end is not None
    into.phases.append({"pull": watched.marker_at, "create": 0.0, "run": end - watched.marker_at})
    into.wire.append(wire)
    data = json.loads(report.read_text())
    into.reports.append(data)
    into.fetched.append(int(data["bytes_fetched"]))
    into.requests.append(sum(int(layer["requests"]) for layer in data["layers"]))
    return True


def _remove_docker_images(infra: BenchInfra) -> None:
    dockerd = infra.dockerd
    listing = dockerd.docker("ps", "-aq", check=False)
    if listing.stdout.split():
        dockerd.docker("rm", "-f", *listing.stdout.split(), check=False)
    images = dockerd.docker("images", "-aq", check=False)
    if images.stdout.split():
        dockerd.docker("rmi", "-f", *sorted(set(images.stdout.split())), check=False)
    dockerd.docker("image", "prune", "-a", "-f", check=False)


def _docker_run(infra: BenchInfra, example: Example, ref: str, into: Measured) -> None:
    dockerd = infra.dockerd
    env = {"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.config_dir)}
    ready = re.compile(example.ready) if example.ready else None
    try:
        infra.wan.reset_counters()
        pull = timed_run([DOCKER_CLI, "pull", "-q", ref], env=env, timeout=600)
        if not pull.ok:
            into.fail(pull.failure())
            return
        create = timed_run(
            [DOCKER_CLI, "create", "--network", "none", ref], env=env, timeout=RUN_TIMEOUT
        )
        if not create.ok:
            into.fail(create.failure())
            return
        container = create.stdout.strip()

        def stop(_: subprocess.Popen[str]) -> None:
            # Not timed: the ready line is the end of the measurement.
            threading.Thread(
                target=dockerd.docker, args=("rm", "-f", container), daemon=True
            ).start()

        watched = _watch(
            [DOCKER_CLI, "start", "-a", container], env=env, ready=ready, on_ready=stop
        )
        wire = infra.wan.bytes_to_client
        problem = _check_output(example, watched)
        if problem is not None:
            into.fail(f"`docker start -a` of {ref} {problem}")
            return
        end = watched.ready_at if example.ready else watched.ended_at
        assert end is not None
        into.phases.append({"pull": pull.wall_s, "create": create.wall_s, "run": end})
        into.wire.append(wire)
    finally:
        # Everything goes, so the next pull is real.
        _remove_docker_images(infra)


# --- the section ---------------------------------------------------------------------------


def _quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _per_layer(report: dict[str, Any], facts: ImageFacts) -> str:
    """The fetch report's layers in manifest order (bottom first), with their prefetch
    regions."""
    position = {digest: number for number, digest in enumerate(facts.digests)}
    layers = sorted(report["layers"], key=lambda layer: position.get(layer["digest"], 99))
    parts = []
    for layer in layers:
        digest = str(layer["digest"])
        prefetch = facts.prefetch_by_layer.get(digest)
        parts.append(
            f"{position.get(digest, -1) + 1}. {digest[7:19]} ({data_size(int(layer['size']))}"
            + (f", prefetch region {data_size(prefetch)}" if prefetch else "")
            + f"): {layer['requests']} request{'' if int(layer['requests']) == 1 else 's'}, "
            + data_size(int(layer["bytes_fetched"]))
        )
    return "; ".join(parts)


def _bar_note(
    mode: Mode, total: float | None, gzip_total: float | None, estargz_total: float | None
) -> str:
    if mode.docker:
        return ""
    note = f"{ratio(total, gzip_total)}x gzip"
    if mode.key != "estargz":
        note += f"\n{ratio(total, estargz_total)}x eStargz"
    return note


def _image_line(example: Example, facts: dict[str, ImageFacts]) -> str:
    parts = []
    for mode in MODES:
        image = facts[mode.key]
        text = f"{mode.key} {mebibytes(image.size)}"
        if not mode.docker:
            text += f" ({image.estargz} eStargz layers, {image.prefetch} with a prefetch region"
            if image.prefetch:
                text += f", {data_size(image.prefetch_bytes)} in all"
            text += ")"
        parts.append(text)
    return f"- {example.name}: {facts['gzip'].layers} layers; compressed: " + "; ".join(parts)


def _measure(
    infra: BenchInfra,
    built: dict[str, Built],
    results: dict[str, dict[str, Measured]],
    host: str,
    n: int,
) -> None:
    """Repetition `n` of every mode of every example."""
    direct = infra.registry.host
    for example in EXAMPLES:
        for mode in MODES:
            print(f"bench optimized: {example.name} {mode.key} #{n}", file=sys.stderr, flush=True)
            ref = built[example.name].refs[mode.key].replace(direct, host, 1)
            measured = results[example.name]
            into = measured[mode.key]
            if mode.docker:
                _docker_run(infra, example, ref, into)
            else:
                warm = measured[WARM] if mode.key == "optimized" else None
                _lazybuild_run(infra, example, ref, n, into, warm=warm)
            for what in (into, measured[WARM]) if mode.key == "optimized" else (into,):
                if what.failure is not None:
                    print(f"  failed: {what.failure}", file=sys.stderr, flush=True)
                elif what.phases:
                    phases = ", ".join(f"{k} {v:.2f}" for k, v in what.phases[-1].items())
                    extra = f", {what.requests[-1]} requests" if what.requests else ""
                    print(f"  {phases} s{extra}", file=sys.stderr, flush=True)


def run(infra: BenchInfra, repeat: int = 3, *, wan: bool = True) -> Section:
    load_before = os.getloadavg()[0]
    host = infra.wan.host if wan else infra.registry.host
    infra.dockerd  # noqa: B018 - started before the clock runs, not inside a repetition

    built: dict[str, Built] = {}
    for example in EXAMPLES:
        print(f"bench optimized: building {example.name}", file=sys.stderr, flush=True)
        built[example.name] = _build_images(infra, example)

    results = {
        example.name: {key: Measured() for key in [*(mode.key for mode in MODES), WARM]}
        for example in EXAMPLES
    }
    for n in range(repeat):
        # Interleaved so that drift in the machine's speed affects every mode alike.
        _measure(infra, built, results, host, n)

    table = [
        [
            "image",
            "mode",
            f"to exit / ready (median of {repeat})",
            "pull",
            "create",
            "run",
            "range requests (fetch report)",
            "fetched (fetch report)",
            "on the wire (proxy → client)",
            "ratio to plain gzip",
            "ratio to eStargz",
        ]
    ]
    verdicts: list[str] = []
    notes: list[str] = []
    image_lines: list[str] = []
    panels: list[Panel] = []
    for example in EXAMPLES:
        measured = results[example.name]
        info = built[example.name]
        gzip_total = measured["gzip"].total_median
        estargz_total = measured["estargz"].total_median
        bars = []
        rows = [(mode.key, mode.label, mode.docker) for mode in MODES]
        rows.insert(3, (WARM, WARM_LABEL, False))
        for key, label, docker in rows:
            m = measured[key]
            phases = m.median_phases() if m.failure is None else {}
            total = m.total_median
            table.append(
                [
                    example.name,
                    label,
                    seconds(total),
                    seconds(phases.get("pull")),
                    seconds(phases.get("create")) if docker else "(in run)",
                    seconds(phases.get("run")),
                    "" if docker else (str(m.int_median(m.requests)) if m.requests else "n/a"),
                    "" if docker else data_size(m.int_median(m.fetched)),
                    data_size(m.int_median(m.wire)),
                    "" if key == "gzip" else ratio(total, gzip_total),
                    "" if key in ("gzip", "estargz") else ratio(total, estargz_total),
                ]
            )
            if m.failure:
                notes.append(f"**{example.name}, {label} failed**: {m.failure}")
        for mode in MODES:
            m = measured[mode.key]
            bars.append(
                Bar(
                    mode.short,
                    m.median_phases() if m.failure is None else {},
                    _bar_note(mode, m.total_median, gzip_total, estargz_total),
                    failed=m.failure is not None,
                )
            )
        panels.append(Panel(f"{example.name} ({example.kind})", bars))
        goal_note = "" if example.ready else " (the issue sets no goal for this image)"
        for key in OPTIMIZED_MODES:
            optimized_total = measured[key].total_median
            verdicts.append(
                verdict(
                    f"{example.name}, {key} ≤ {OPTIMIZED_VS_ESTARGZ_GOAL} x unoptimized "
                    f"eStargz{goal_note}",
                    _quotient(optimized_total, estargz_total),
                    OPTIMIZED_VS_ESTARGZ_GOAL,
                )
            )
            verdicts.append(
                verdict(
                    f"{example.name}, {key} ≤ {OPTIMIZED_VS_GZIP_GOAL} x plain gzip{goal_note}",
                    _quotient(optimized_total, gzip_total),
                    OPTIMIZED_VS_GZIP_GOAL,
                )
            )
        warm_total = measured[WARM].total_median
        if warm_total is not None and estargz_total:
            verdicts.append(
                f"{example.name}: the same optimized run with every chunk cached takes "
                f"{warm_total:.2f} s, {warm_total / estargz_total:.2f} x the unoptimized cold "
                "run: the part of lazybuild run that no layout of the layers can shorten "
                "(interpreter and filesystem process start-up, manifest, mount, runc)."
            )
        for mode in MODES:
            m = measured[mode.key]
            if m.reports:
                notes.append(
                    f"{example.name}, {mode.label}: fetch report of the first repetition, "
                    f"layers bottom first: {_per_layer(m.reports[0], info.facts[mode.key])}."
                )
        keys = [mode.key for mode in MODES] + [WARM]
        notes.append(
            f"{example.name}: to exit / ready per repetition: "
            + "; ".join(f"{key} {seconds_list(measured[key].totals)}" for key in keys)
            + "."
        )
        for what, lines in (("optimized", info.profile), ("--optimize-base", info.profile_base)):
            if lines:
                profile = " / ".join(
                    line.split("workload profile:", 1)[1].strip() for line in lines.splitlines()
                )
                notes.append(f"{example.name}: the {what} build's workload profile: {profile}.")
        image_lines.append(_image_line(example, info.facts))

    chart_problem = matplotlib_missing()
    if chart_problem is None:
        stacked_bars(
            CHART,
            panels,
            title=f"Start-up over the emulated WAN (median of {repeat}): pull / create / run",
        )
        chart = (
            f"![start-up per mode, stacked pull / create / run]({CHART.name})\n\n"
            "Chart: the repetition with the median total per mode."
        )
    else:
        chart = f"Chart not drawn: {chart_problem}."

    setup = describe(
        {
            "lazybuild": [*LAZYBUILD, "--version"],
            "dockerd": ["/usr/sbin/dockerd", "--version"],
            "runc": ["runc", "--version"],
            "registry": ["docker-registry", "--version"],
        }
    )
    setup += [
        load_line(load_before),
        f"- Link: {WAN_DESCRIPTION}" if wan else "- Link: loopback (--no-wan)",
        "- Examples, each built by `lazybuild build` outside the timing: "
        "`examples/hello-python` (`python3 /app/hello.py`: imports argparse, email, "
        "http.client, json, urllib and prints one line; on the python3 base image, "
        "Debian bookworm minbase + python3 in 3 layers) and `examples/server-go` (a Go "
        "1.19 net/http server compiled with CGO_ENABLED=0 in the golang builder and copied "
        "onto the Debian bookworm minbase image, 3 layers; prints `ready: listening on "
        "http://127.0.0.1:8080` once it listens) and `examples/server-java` (a "
        "com.sun.net.httpserver server compiled in the build by the JRE's own compiler "
        "module, on Debian bookworm minbase + default-jre-headless (OpenJDK 17), 3 layers; "
        "the same ready line). Base images made with debootstrap, "
        "their eStargz versions by `lazybuild convert`; all in docker-registry on 127.0.0.1:",
        *[f"  {line}" for line in image_lines],
        "- plain gzip: `lazybuild build -o type=docker,dest=T` on the gzip base, "
        "`docker load` + `docker push` (dockerd gzips the layers itself); measured as "
        "`docker pull` (pull), `docker create --network none` (create) and `docker start "
        "-a` until exit or the ready line (run); private dockerd 20.10 (own data root, "
        "overlay2, no bridge), every container and image removed after each repetition",
        "- eStargz: `lazybuild build --no-optimize --push` on the eStargz base; eStargz "
        "optimized: `lazybuild build --push` (the default: profiles the image's CMD and "
        "writes the layers the build made with what it read first, and publishes the "
        "record with the image, from which `lazybuild run` prefetches the listed files of "
        "the base layers as it starts, without waiting for them; the server with "
        "`--workload-ready ready`). Both measured as `lazybuild --state-dir NEW run "
        "--network none --fetch-report F IMAGE` until exit or the ready line: pull = until "
        "its `running [...]` progress line (CLI start, image resolved, layers' TOCs read, "
        "prefetch regions and the record's files requested but not waited for, overlay "
        "mounted), run = the rest (runc create and "
        "start included, so there is no separate create); a new state dir per repetition. "
        "The warm row runs the optimized image again in the same state dir right after",
        "- eStargz optimized with `--optimize-base`: `lazybuild build --optimize-base "
        "--push`, which rewrites the base image's layers too with what the workload read "
        "first (they are then no longer shared with the base image); run the same way",
        "- A server's time ends at its ready line; it is then stopped (not timed). "
        "Range requests and fetched bytes are from lazybuild's fetch report (TOC reads "
        "included; manifest and config requests are not); wire bytes are what the proxy "
        "delivered. Repetitions interleave the modes; figures are medians.",
    ]
    notes[:0] = [*verdicts, chart]
    return Section(
        name="optimized",
        title="optimized: start-up of built images over the WAN, plain gzip vs eStargz vs "
        "optimized eStargz",
        setup=setup,
        table=table,
        notes=notes,
    )
