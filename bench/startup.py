"""`startup`: time to run a command from an image that is not on the machine yet.

lazybuild runs the eStargz version of the image straight from the registry, fetching
only what the command reads; the peer, dockerd, pulls the whole plain gzip image and
then runs it. Both go through the emulated WAN link and both start with nothing
cached: lazybuild gets a fresh state dir per repetition, dockerd has the image
removed (rmi + prune) between repetitions. A warm lazybuild run (second run in the
same state dir) is reported too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.convert import lazybuild_argv
from bench.infra import WAN_DESCRIPTION, BenchInfra
from bench.machine import describe, load_line
from bench.report import Section, data_size, mebibytes, ratio, seconds, seconds_list
from bench.timing import Timed, median, timed_run
from tests.support import imagebuild, procs, rootfs
from tests.support.dockerd import DOCKER_CLI

PACKAGES = ["python3"]
COMMAND = ["python3", "-c", 'print("hello")']
EXPECTED = "hello"
GOAL = 0.3  # lazybuild cold / docker pull + run


@dataclass
class Measured:
    """Repetitions of one thing; the report uses medians."""

    label: str
    wall: list[float] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)  # bytes the proxy delivered to the client
    fetched: list[int] = field(default_factory=list)  # lazybuild's own fetch report
    steps: dict[str, list[float]] = field(default_factory=dict)  # docker: pull, run
    failure: str | None = None

    def fail(self, message: str) -> None:
        self.failure = self.failure or message

    @property
    def wall_median(self) -> float | None:
        return median(self.wall) if self.failure is None and self.wall else None

    def bytes_median(self, values: list[int]) -> int | None:
        value = median(values)
        return None if value is None or self.failure is not None else int(value)


def _push_images(infra: BenchInfra) -> tuple[str, str]:
    """The python3 image as plain gzip and as lazybuild's eStargz, on the direct host."""
    base = rootfs.debootstrap_rootfs("minbase", PACKAGES)
    layout = imagebuild.cached_rootfs_image(base)
    host = infra.registry.host
    imagebuild.push_oci_layout(layout, host, "bench/python", "gzip")
    gzip_ref = f"{host}/bench/python:gzip"
    estargz_ref = f"{host}/bench/python:estargz"
    with tempfile.TemporaryDirectory(dir=infra.workdir) as scratch:
        env = {"XDG_CACHE_HOME": f"{scratch}/cache", "DOCKER_CONFIG": f"{scratch}/docker"}
        done = timed_run(
            lazybuild_argv("convert", "--tmpdir", scratch, gzip_ref, estargz_ref), env=env
        )
    if not done.ok:
        raise RuntimeError(f"converting the python image failed: {done.failure()}")
    return gzip_ref, estargz_ref


def _check_hello(result: Timed) -> str | None:
    if not result.ok:
        return result.failure()
    if result.stdout.strip() != EXPECTED:
        return f"`{' '.join(result.argv)}` printed {result.stdout.strip()!r}, not {EXPECTED!r}"
    return None


def _lazybuild_run(infra: BenchInfra, state: Path, ref: str, report: Path, into: Measured) -> None:
    infra.wan.reset_counters()
    options = ["--network", "none", "--fetch-report", str(report)]
    result = timed_run(
        [*lazybuild_argv("--state-dir", str(state), "run"), *options, ref, *COMMAND],
        env={"XDG_CACHE_HOME": str(state / "xdg-cache")},
        timeout=600,
    )
    problem = _check_hello(result)
    if problem is not None:
        into.fail(problem)
        return
    into.wall.append(result.wall_s)
    into.wire.append(infra.wan.bytes_to_client)
    into.fetched.append(int(json.loads(report.read_text())["bytes_fetched"]))


def _release_state(state: Path) -> None:
    """Free a lazybuild state dir: its caches, and any mount a failed run left."""
    subprocess.run(
        lazybuild_argv("--state-dir", str(state), "prune"), capture_output=True, check=False
    )
    procs.unmount_all_under(state)
    shutil.rmtree(state, ignore_errors=True)


def _docker_run(infra: BenchInfra, ref: str, into: Measured) -> None:
    dockerd = infra.dockerd
    env = {"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.config_dir)}
    infra.wan.reset_counters()
    pull = timed_run([DOCKER_CLI, "pull", "-q", ref], env=env, timeout=600)
    run = timed_run(
        [DOCKER_CLI, "run", "--rm", "--network", "none", ref, *COMMAND], env=env, timeout=600
    )
    wire = infra.wan.bytes_to_client
    problem = pull.failure() if not pull.ok else _check_hello(run)
    # Remove the image so the next pull is real.
    dockerd.docker("rmi", "-f", ref, check=False)
    dockerd.docker("image", "prune", "-a", "-f", check=False)
    if problem is not None:
        into.fail(problem)
        return
    into.wall.append(pull.wall_s + run.wall_s)
    into.wire.append(wire)
    into.steps.setdefault("pull", []).append(pull.wall_s)
    into.steps.setdefault("run", []).append(run.wall_s)


def run(infra: BenchInfra, repeat: int = 3, *, wan: bool = True) -> Section:
    load_before = os.getloadavg()[0]
    gzip_ref, estargz_ref = _push_images(infra)
    gzip_size = infra.compressed_size(gzip_ref)
    estargz_size = infra.compressed_size(estargz_ref)
    layers = len(infra.manifest(gzip_ref)["layers"])
    direct = infra.registry.host
    wan_host = infra.wan.host if wan else direct
    link = "emulated WAN" if wan else "loopback"
    gzip_wan = gzip_ref.replace(direct, wan_host, 1)
    estargz_wan = estargz_ref.replace(direct, wan_host, 1)

    cold = Measured("lazybuild run, cold cache (fresh state dir)")
    warm = Measured("lazybuild run, warm cache (second run, same state dir)")
    docker = Measured("docker pull + docker run --rm --network none (image removed before)")
    infra.dockerd  # noqa: B018 - started before the clock runs, not inside a repetition
    for n in range(repeat):
        # Interleaved so that drift in the machine's speed affects both tools alike.
        state = Path(tempfile.mkdtemp(prefix=f"startup-{n}-", dir=infra.workdir))
        try:
            _lazybuild_run(infra, state, estargz_wan, state / "cold.json", cold)
            _lazybuild_run(infra, state, estargz_wan, state / "warm.json", warm)
        finally:
            _release_state(state)
        _docker_run(infra, gzip_wan, docker)

    rows = [
        [
            "what is timed",
            f"time (median of {repeat})",
            "fetched (lazybuild report)",
            "on the wire (proxy, to client)",
            "time ratio lazybuild / docker",
            "wire ratio lazybuild / docker",
        ]
    ]
    for measured in (cold, warm, docker):
        is_peer = measured is docker
        wire = measured.bytes_median(measured.wire)
        rows.append(
            [
                measured.label,
                seconds(measured.wall_median),
                "" if is_peer else data_size(measured.bytes_median(measured.fetched)),
                data_size(wire),
                "" if is_peer else ratio(measured.wall_median, docker.wall_median),
                "" if is_peer else ratio(wire, docker.bytes_median(docker.wire)),
            ]
        )
    notes: list[str] = []
    for measured in (cold, warm, docker):
        if measured.failure:
            notes.append(f"**{measured.label} failed**: {measured.failure}")
    cold_ratio = (
        cold.wall_median / docker.wall_median
        if cold.wall_median is not None and docker.wall_median
        else None
    )
    if cold_ratio is None:
        verdict = "Goal (cold lazybuild ≤ 0.3 x docker): not measured, see failures."
    elif cold_ratio <= GOAL:
        verdict = f"Goal (cold lazybuild ≤ {GOAL} x docker): **met** ({cold_ratio:.2f})."
    else:
        verdict = f"Goal (cold lazybuild ≤ {GOAL} x docker): **missed** ({cold_ratio:.2f})."
    fetched = cold.bytes_median(cold.fetched)
    share = (
        f"{fetched / estargz_size:.1%} of the eStargz image's {mebibytes(estargz_size)}"
        if fetched is not None
        else "n/a"
    )
    notes[:0] = [
        verdict,
        f"Cold lazybuild fetched {share} (compressed layer bytes, from `--fetch-report`); "
        "the wire column also counts manifests, configs, TOCs and HTTP overhead. "
        f"docker downloads the whole gzip image ({mebibytes(gzip_size)}).",
        "Times per repetition: lazybuild cold "
        f"{seconds_list(cold.wall)}, warm {seconds_list(warm.wall)}; "
        f"docker {seconds_list(docker.wall)} "
        f"(of which pull {seconds_list(docker.steps.get('pull', []))}, "
        f"run {seconds_list(docker.steps.get('run', []))}).",
        f"Output check: every run counted above printed `{EXPECTED}` (a run that prints "
        "anything else counts as a failure).",
    ]

    setup = describe(
        {
            "lazybuild": lazybuild_argv("--version"),
            "dockerd": ["/usr/sbin/dockerd", "--version"],
            "runc": ["runc", "--version"],
            "registry": ["docker-registry", "--version"],
        }
    )
    setup += [
        load_line(load_before),
        f"- Image: Debian bookworm minbase + python3, {layers} layers; plain gzip "
        f"{mebibytes(gzip_size)} compressed (docker's), eStargz made by `lazybuild convert` "
        f"{mebibytes(estargz_size)} (lazybuild's); in docker-registry on 127.0.0.1",
        f"- Command: `{' '.join(COMMAND[:2])} '{COMMAND[2]}'` in both, with no network",
        f"- Link ({link}): {WAN_DESCRIPTION}" if wan else "- Link: loopback (--no-wan)",
        "- lazybuild: `lazybuild --state-dir NEW run --network none --fetch-report F IMAGE "
        "CMD`, a new state dir per repetition (cold); the warm row reruns it in the same "
        "state dir right after",
        "- docker: private dockerd 20.10 (own data root, `--iptables=false --bridge=none`, "
        "overlay2); `docker pull` + `docker run --rm --network none`, timed together; "
        "`docker rmi` + `docker image prune -a` after each repetition so every pull is real",
        "- Repetitions interleave lazybuild and docker; times are wall-clock medians.",
    ]
    return Section(
        name="startup",
        title="startup: first run of an image over the WAN, lazybuild run vs docker pull + run",
        setup=setup,
        table=rows,
        notes=notes,
    )
