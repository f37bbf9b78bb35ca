"""A build through ``lazybuild serve`` makes the image the same build makes without it;
a failing step fails the same way; Ctrl-C cancels the daemon's build and leaves nothing
running; a killed daemon's leftovers are gone after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from lazybuild.api.control.v1 import control_pb2
from lazybuild.api.control.v1.control_pb2_grpc import ControlStub
from lazybuild.cli.main import main
from tests.e2e.buildsupport import (
    assert_nothing_left,
    filesystem_processes,
    runc_containers,
    write_context,
)
from tests.support.dockerd import Dockerd
from tests.support.procs import mounts_under
from tests.support.registry import Registry
from tests.support.wanproxy import WanProxy

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
_LAZYBUILD = [sys.executable, "-m", "lazybuild"]
_EPOCH = 1_700_000_000

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY message.txt /app/message.txt
COPY tree/ /app/tree/
RUN tr a-z A-Z < /app/message.txt > /app/shout.txt && echo built
CMD ["cat", "/app/shout.txt"]
"""

FAILING = """\
ARG BASE
FROM ${BASE}
RUN echo about to fail && exit 3
"""

SLOW = """\
ARG BASE
FROM ${BASE}
RUN echo "sleep-$((6*7))" && sleep 300
"""


def _lazybuild(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazybuild", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/daemon-build/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


class Daemons:
    """``lazybuild serve`` processes on one state directory and socket, started in turn;
    those still running are stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "daemon-state"
        self.sock = tmp_path / "lazybuild.sock"
        self.address = f"unix://{self.sock}"
        self.log_path = tmp_path / "daemon.log"
        self.started: list[subprocess.Popen[str]] = []
        # The chunk cache's bound, which the daemon's shared filesystem process keeps.
        self.config = tmp_path / "lazybuild.toml"
        self.config.write_text('cache_size = "4GiB"\nmax_parallel_builds = 2\n')

    def _served(self) -> int:
        return self.log_path.read_text().count("serving on") if self.log_path.exists() else 0

    def start(self) -> subprocess.Popen[str]:
        before = self._served()
        with self.log_path.open("a") as log:
            process = subprocess.Popen(
                [
                    *_LAZYBUILD,
                    "--state-dir",
                    str(self.state),
                    "serve",
                    "--config",
                    str(self.config),
                    "--addr",
                    self.address,
                ],
                cwd=REPO,
                stderr=log,
                text=True,
            )
        self.started.append(process)
        deadline = time.monotonic() + 60
        while self._served() == before:
            assert process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "the daemon never listened"
            time.sleep(0.1)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    found = Daemons(tmp_path)
    try:
        yield found
    finally:
        found.stop_all()


Served = tuple[str, Path, subprocess.Popen[str]]


@pytest.fixture
def daemon(daemons: Daemons) -> Served:
    return daemons.address, daemons.state, daemons.start()


def _context(tmp_path: Path, dockerfile: str) -> Path:
    context = write_context(
        tmp_path / "context",
        dockerfile,
        {
            "message.txt": "built through the daemon\n",
            "tree/a.txt": "a\n",
            "tree/ignored.log": "not sent\n",
            ".dockerignore": "**/*.log\n",
        },
    )
    os.utime(context / "message.txt", ns=(1_600_000_000_123_456_789,) * 2)
    return context


def _builds_left_nothing(state: Path) -> None:
    """What finished builds leave in a running daemon: nothing but its shared
    filesystem (one process, its FUSE mount and the layers' EROFS mounts under it)."""
    shared = state / "mnt"
    assert [point for point in mounts_under(state) if not point.is_relative_to(shared)] == []
    assert runc_containers(state) == []
    assert len(filesystem_processes(state)) <= 1
    staging = state / "build" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_build_through_the_daemon_makes_the_same_image(
    tmp_path: Path, base_image: str, registry: Registry, daemon: Served
) -> None:
    address, daemon_state, _ = daemon
    context = _context(tmp_path, DOCKERFILE)
    results = {}
    steps: dict[str, list[tuple[str, str]]] = {}
    for where in ("local", "daemon"):
        out = tmp_path / where
        out.mkdir()
        common = [
            "build",
            "--progress=rawjson",
            "--build-arg",
            f"BASE={base_image}",
            # Pins the config's and the new layers' timestamps: two builds of the same
            # inputs then make the same image, wherever they run.
            "--build-arg",
            f"SOURCE_DATE_EPOCH={_EPOCH}",
            "-t",
            f"{registry.host}/daemon-build/app:{where}",
            "--push",
            "-o",
            f"type=oci,dest={out / 'image.tar'},name=app:1",
            "--iidfile",
            str(out / "iid"),
            "--metadata-file",
            str(out / "metadata.json"),
            "-o",
            f"type=local,dest={out / 'rootfs'}",
            "--depfile",
            str(out / "deps.mk"),
            "--fetch-report",
            str(out / "fetch.json"),
            "--record-out",
            str(out / "record.json"),
            str(context),
        ]
        if where == "local":
            done = _lazybuild("--state-dir", str(tmp_path / "local-state"), *common)
        else:
            done = _lazybuild(*common[:1], "--builder", address, *common[1:])
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        assert any(e["type"] == "log" and "built" in e["data"] for e in events), done.stderr
        steps[where] = [(e["vertex"], e["name"]) for e in events if e["type"] == "started"]
        results[where] = (
            (out / "iid").read_text(),
            json.loads((out / "metadata.json").read_text())["containerimage.digest"],
            (out / "image.tar").stat().st_size,
        )
    assert results["daemon"] == results["local"]
    # --progress=rawjson: the same steps, by the same vertex digests.
    assert steps["daemon"] == steps["local"]
    # The files a local build writes beside its outputs, written by the client.
    local, remote = tmp_path / "local", tmp_path / "daemon"
    depfile = (remote / "deps.mk").read_text()
    assert depfile == (local / "deps.mk").read_text().replace(str(local), str(remote))
    assert f"{context / 'message.txt'}" in depfile and "ignored.log" not in depfile
    assert f"{context / 'Dockerfile'}" in depfile and f"{context / '.dockerignore'}" in depfile

    def fetched_layers(out: Path) -> list[str]:
        report = json.loads((out / "fetch.json").read_text())
        return sorted(layer["digest"] for layer in report["layers"])

    assert fetched_layers(remote) == fetched_layers(local)
    assert (remote / "record.json").stat().st_size > 0
    # type=local: the same tree, file for file (mtimes to the second: the tar it travels
    # in keeps whole seconds; those the steps set are the time each build ran them).
    assert _tree(tmp_path / "daemon" / "rootfs") == _tree(tmp_path / "local" / "rootfs")
    assert (tmp_path / "daemon" / "rootfs" / "app" / "shout.txt").read_text() == (
        "BUILT THROUGH THE DAEMON\n"
    )
    _builds_left_nothing(daemon_state)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        link = os.readlink(path) if path.is_symlink() else ""
        size = info.st_size if path.is_file() and not path.is_symlink() else 0
        found[str(path.relative_to(root))] = (
            info.st_mode,
            info.st_uid,
            info.st_gid,
            size,
            link,
            int(info.st_mtime) if info.st_mtime < _EPOCH and not path.is_symlink() else 0,
            info.st_nlink if not path.is_dir() else 0,
        )
    return found


def test_a_failing_step_fails_the_same_way(tmp_path: Path, base_image: str, daemon: Served) -> None:
    address, _, _ = daemon
    context = _context(tmp_path, FAILING)
    args = ["--progress=plain", "--build-arg", f"BASE={base_image}", str(context)]
    local = _lazybuild("--state-dir", str(tmp_path / "local-state"), "build", *args)
    remote = _lazybuild("build", "--builder", address, *args)
    assert local.returncode == remote.returncode == 1
    assert remote.stderr.splitlines()[-1] == local.stderr.splitlines()[-1]
    assert " > about to fail" in remote.stderr


def test_ctrl_c_cancels_the_build_in_the_daemon(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    address, daemon_state, process = daemon
    context = _context(tmp_path, SLOW)
    base_arg = ["--build-arg", f"BASE={base_image}"]
    client = subprocess.Popen(
        [*_LAZYBUILD, "build", "--builder", address, "--progress=plain", *base_arg, str(context)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stderr is not None
    seen = []
    for line in client.stderr:
        seen.append(line)
        if "sleep-42" in line:  # the step's output, not its command line
            break
    else:
        pytest.fail("".join(seen))
    assert runc_containers(daemon_state)
    with grpc.insecure_channel(address.replace("unix://", "unix:")) as channel:
        info = ControlStub(channel).Info(control_pb2.InfoRequest(), timeout=30)
        assert info.builds_running == 1
    client.send_signal(signal.SIGINT)
    _, rest = client.communicate(timeout=120)
    assert client.returncode == 130, "".join(seen) + rest
    deadline = time.monotonic() + 60
    shared = daemon_state / "mnt"
    staging = daemon_state / "build" / "staging"
    # The build's clean-up runs after the client's call ended: its container, its
    # mounts, then its staging directory.
    while (
        runc_containers(daemon_state)
        or any(not point.is_relative_to(shared) for point in mounts_under(daemon_state))
        or (staging.exists() and any(staging.iterdir()))
    ):
        assert time.monotonic() < deadline, "the daemon's build was not cancelled"
        time.sleep(0.2)
    _builds_left_nothing(daemon_state)
    assert process.poll() is None  # and it keeps serving
    du = _lazybuild("du", "--builder", address)
    assert du.returncode == 0, du.stderr


def _start_slow_build(tmp_path: Path, base_image: str, address: str) -> subprocess.Popen[str]:
    """A client whose build's step is running (its output seen) when this returns."""
    context = _context(tmp_path, SLOW)
    base_arg = ["--build-arg", f"BASE={base_image}"]
    client = subprocess.Popen(
        [*_LAZYBUILD, "build", "--builder", address, "--progress=plain", *base_arg, str(context)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stderr is not None
    seen = []
    for line in client.stderr:
        seen.append(line)
        if "sleep-42" in line:
            return client
    pytest.fail("".join(seen))


def test_sigterm_cancels_running_builds_and_takes_everything_down(
    tmp_path: Path, base_image: str, daemons: Daemons
) -> None:
    process = daemons.start()
    client = _start_slow_build(tmp_path, base_image, daemons.address)
    assert runc_containers(daemons.state)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, daemons.log_path.read_text()
    _, rest = client.communicate(timeout=60)
    assert client.returncode == 1
    assert rest.splitlines()[-1] == "lazybuild: error: the build was cancelled"
    assert not daemons.sock.exists()
    assert_nothing_left(daemons.state)
    assert not any((daemons.state / "daemon-builds").glob("*"))


def test_after_a_sigkill_mid_build_the_next_daemon_cleans_up(
    tmp_path: Path, base_image: str, daemons: Daemons
) -> None:
    process = daemons.start()
    client = _start_slow_build(tmp_path, base_image, daemons.address)
    assert runc_containers(daemons.state)
    process.kill()
    process.wait(timeout=60)
    _, rest = client.communicate(timeout=60)
    assert client.returncode == 1
    assert rest.splitlines()[-1].startswith("lazybuild: error: "), rest
    assert "Traceback" not in rest
    assert mounts_under(daemons.state)  # what the killed daemon's build left mounted

    daemons.start()
    assert_nothing_left(daemons.state)
    assert not any((daemons.state / "daemon-builds").glob("*"))
    # And it builds again.
    context = _context(tmp_path / "again", FAILING.replace("exit 3", "true"))
    done = _lazybuild(
        "build", "--builder", daemons.address, "--build-arg", f"BASE={base_image}", str(context)
    )
    assert done.returncode == 0, done.stderr


def test_two_builds_at_once_both_succeed(
    tmp_path: Path, base_image: str, registry: Registry, daemon: Served
) -> None:
    address, daemon_state, _ = daemon
    clients = []
    for name in ("one", "two"):
        context = _context(tmp_path / name, DOCKERFILE)
        (context / "message.txt").write_text(f"build {name}\n")
        clients.append(
            subprocess.Popen(
                [
                    *_LAZYBUILD,
                    "build",
                    "--builder",
                    address,
                    "--progress=plain",
                    "--build-arg",
                    f"BASE={base_image}",
                    "--iidfile",
                    str(tmp_path / name / "iid"),
                    "-t",
                    f"{registry.host}/daemon-build/{name}:1",
                    "--push",
                    str(context),
                ],
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for client in clients:
        _, err = client.communicate(timeout=600)
        assert client.returncode == 0, err
    iids = {(tmp_path / name / "iid").read_text() for name in ("one", "two")}
    assert len(iids) == 2  # two different images
    _builds_left_nothing(daemon_state)


READER = """\
ARG BASE
FROM ${BASE}
COPY message.txt /message.txt
RUN cat /usr/bin/perl* /usr/lib/x86_64-linux-gnu/*.so* > /dev/null && cat /message.txt
"""


def _build_through(daemons: Daemons, contexts: list[Path], base: str) -> None:
    """One build per context through the daemon, all at once; each must succeed."""
    clients = [
        subprocess.Popen(
            [
                *_LAZYBUILD,
                "build",
                "--builder",
                daemons.address,
                "--progress=plain",
                "--build-arg",
                f"BASE={base}",
                str(context),
            ],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for context in contexts
    ]
    for client in clients:
        _, err = client.communicate(timeout=600)
        assert client.returncode == 0, err


def test_two_builds_on_one_cold_image_fetch_it_once(
    tmp_path: Path, base_image: str, registry: Registry
) -> None:
    """The daemon's builds share one filesystem process: two builds at once on a cold
    image cost the wire what one build costs (the TOCs and chunks fetched once)."""
    proxy = WanProxy.counting(registry.host).start()
    base = base_image.replace(registry.host, proxy.host, 1)
    contexts = []
    for name in ("one", "two", "three"):
        context = _context(tmp_path / name, READER)
        (context / "message.txt").write_text(f"build {name}\n")
        contexts.append(context)
    fetched = []
    try:
        for run, wanted in (("alone", contexts[:1]), ("together", contexts[1:])):
            (tmp_path / run).mkdir()
            daemons = Daemons(tmp_path / run)
            try:
                daemons.start()
                proxy.reset_counters()
                _build_through(daemons, wanted, base)
                fetched.append(proxy.bytes_to_client)
                _builds_left_nothing(daemons.state)
            finally:
                daemons.stop_all()
            assert_nothing_left(daemons.state)
    finally:
        proxy.stop()
    alone, together = fetched
    assert alone > 1_000_000  # the step read megabytes of the image
    assert together <= 1.1 * alone, (alone, together)


def test_the_cancel_rpc_cancels_a_build_by_its_id(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    import tempfile

    from lazybuild.cli.main import build_parser
    from lazybuild.daemon.buildclient import build_header, write_context_tar

    address, daemon_state, _ = daemon
    context = _context(tmp_path, SLOW)
    args = build_parser().parse_args(
        ["build", "--builder", address, "--build-arg", f"BASE={base_image}", str(context)]
    )
    header, _, _ = build_header(args)

    def requests(tar: IO[bytes]) -> Iterator[control_pb2.BuildRequest]:
        yield control_pb2.BuildRequest(header=header)
        tar.seek(0)
        yield control_pb2.BuildRequest(context_chunk=tar.read())

    target = address.replace("unix://", "unix:")
    with tempfile.TemporaryFile() as tar, grpc.insecure_channel(target) as channel:
        write_context_tar(context, context / "Dockerfile", tar)
        stub = ControlStub(channel)
        responses = stub.Build(requests(tar))
        with pytest.raises(grpc.RpcError) as ended:
            for response in responses:
                event = response.progress_event
                if event and "sleep-42" in json.loads(event).get("data", ""):
                    reply = stub.Cancel(control_pb2.CancelRequest(build_id=header.build_id))
                    assert reply.found
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        assert ended.value.details() == "the build was cancelled"
        assert not stub.Cancel(control_pb2.CancelRequest(build_id=header.build_id)).found
    _builds_left_nothing(daemon_state)


def test_load_puts_the_image_into_the_client_s_docker(
    tmp_path: Path, base_image: str, dockerd: Dockerd, daemon: Served
) -> None:
    address, daemon_state, _ = daemon
    context = _context(tmp_path, DOCKERFILE)
    iidfile = tmp_path / "iid"
    done = _lazybuild(
        "build",
        "--builder",
        address,
        "--build-arg",
        f"BASE={base_image}",
        "--load",
        "-t",
        "daemon-load/app:1",
        "--iidfile",
        str(iidfile),
        str(context),
        env=dockerd.env(),
    )
    assert done.returncode == 0, done.stderr
    inspected = json.loads(dockerd.docker("image", "inspect", "daemon-load/app:1").stdout)[0]
    assert inspected["Id"] == iidfile.read_text()
    _builds_left_nothing(daemon_state)


def test_a_second_build_through_the_daemon_hits_its_step_cache(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    address, daemon_state, _ = daemon
    context = _context(tmp_path, DOCKERFILE)
    args = ["build", "--builder", address, "--progress=rawjson"]
    args += ["--build-arg", f"BASE={base_image}", str(context)]
    first, second = _lazybuild(*args), _lazybuild(*args)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr

    def completed(done: subprocess.CompletedProcess[str]) -> dict[str, bool]:
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        return {e["name"]: e["cached"] for e in events if e["type"] == "completed"}

    run_step = next(name for name in completed(first) if "tr a-z A-Z" in name)
    assert not completed(first)[run_step]
    assert completed(second)[run_step]
    _builds_left_nothing(daemon_state)


def _completed(done: subprocess.CompletedProcess[str]) -> dict[str, bool]:
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return {e["name"]: e["cached"] for e in events if e["type"] == "completed"}


def _messages(done: subprocess.CompletedProcess[str]) -> list[str]:
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return [e["data"] for e in events if e["type"] == "message"]


def _blobs(layout: Path) -> set[str]:
    return {blob.name for blob in (layout / "blobs" / "sha256").iterdir()}


def test_a_local_cache_exported_through_the_daemon_is_hit_through_another_and_locally(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    """A CI job's cache directory: exported through one daemon, restored on a runner
    whose daemon has a fresh state directory, and by a local build; the same format."""
    address, daemon_state, _ = daemon
    context = _context(tmp_path, DOCKERFILE)
    cache = tmp_path / "ci-cache"
    build = ["build", "--progress=rawjson", "--build-arg", f"BASE={base_image}"]
    first = _lazybuild(
        *build, "--builder", address, "--cache-to", f"type=local,dest={cache}", str(context)
    )
    assert first.returncode == 0, first.stderr
    run_step = next(name for name in _completed(first) if "tr a-z A-Z" in name)
    assert not _completed(first)[run_step]
    exported = [m for m in _messages(first) if m.startswith("cache exported to")]
    assert exported and f"local cache {cache}@" in exported[0], _messages(first)
    assert "daemon-builds" not in first.stderr  # the daemon's paths are its own
    index = json.loads((cache / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "buildcache"
    ]
    blobs_before = _blobs(cache)
    _builds_left_nothing(daemon_state)

    (tmp_path / "2").mkdir()
    second = Daemons(tmp_path / "2")
    try:
        second.start()
        missing = tmp_path / "no-such-cache"
        again = _lazybuild(
            *build,
            "--builder",
            second.address,
            "--cache-from",
            f"type=local,src={missing}",
            "--cache-from",
            f"type=local,src={cache}",
            "--cache-to",
            f"type=local,dest={cache},mode=max",
            str(context),
        )
        assert again.returncode == 0, again.stderr
        assert _completed(again)[run_step], again.stderr
        # A missing directory is what it is to a local build: a warning naming it.
        warned = [m for m in _messages(again) if m.startswith("warning: --cache-from")]
        assert warned == [
            f"warning: --cache-from local cache {missing}: {missing} is not an OCI image "
            "layout (no oci-layout file); not used"
        ]
        assert "daemon-builds" not in again.stderr
        _builds_left_nothing(second.state)
    finally:
        second.stop_all()
    # Exported into the same directory, merged as a local export merges: earlier blobs
    # stay, index.json names the new cache manifest.
    assert blobs_before <= _blobs(cache)
    index = json.loads((cache / "index.json").read_text())
    assert len(index["manifests"]) == 1
    manifest_digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    assert manifest_digest in _blobs(cache)
    assert not list((cache / "blobs" / ".staging").iterdir())

    local = _lazybuild(
        "--state-dir",
        str(tmp_path / "local-state"),
        *build,
        "--cache-from",
        f"type=local,src={cache}",
        str(context),
    )
    assert local.returncode == 0, local.stderr
    assert _completed(local)[run_step], local.stderr


def _hostile_tars(outside: Path, victim: Path) -> dict[str, bytes]:
    """Tars a client could send instead of its context or cache, each trying one way
    out of the directory it is unpacked in; ``outside`` and ``victim`` are what they
    would reach."""
    import io
    import tarfile

    def tar(*members: tuple[str, bytes | None, dict[str, object]]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, data, attributes in members:
                member = tarfile.TarInfo(name)
                for key, value in attributes.items():
                    setattr(member, key, value)
                member.size = len(data or b"")
                archive.addfile(member, io.BytesIO(data) if data is not None else None)
        return out.getvalue()

    file: dict[str, object] = {}
    up = "../" * 16  # from any depth, up to the root
    blob = f"blobs/sha256/{'0' * 64}"
    return {
        "dot-dot": tar((f"{up}{outside}/dot-dot".replace("//", "/"), b"escaped", file)),
        "absolute": tar((f"{outside}/absolute", b"escaped", file)),
        "symlink": tar(
            ("link", None, {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
            ("link/through-symlink", b"escaped", file),
        ),
        "hardlink-passwd": tar(
            ("passwd", None, {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"})
        ),
        "hardlink-write": tar(
            ("victim", None, {"type": tarfile.LNKTYPE, "linkname": str(victim)}),
            ("victim", b"overwritten", file),
        ),
        "symlink-blob": tar((blob, None, {"type": tarfile.SYMTYPE, "linkname": "/etc/shadow"})),
        "device": tar(
            ("disk", None, {"type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}),
        ),
        "device-outside": tar(
            (f"{outside}/device", None, {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        ),
    }


def test_hostile_context_and_cache_tars_write_nothing_outside_the_build(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    """The raw API, as a hostile client would use it: whatever a tar holds, nothing
    lands outside the build's directory, and a refusal is one line."""
    from lazybuild.cli.main import build_parser
    from lazybuild.daemon.buildclient import build_header

    address, daemon_state, _ = daemon
    context = _context(tmp_path, "ARG BASE\nFROM ${BASE}\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("original\n")
    passwd = os.stat("/etc/passwd")
    args = build_parser().parse_args(
        [
            "build",
            "--builder",
            address,
            "--build-arg",
            f"BASE={base_image}",
            "--cache-from",
            f"type=local,src={tmp_path / 'cache'}",
            str(context),
        ]
    )
    header, _, _ = build_header(args)
    target = address.replace("unix://", "unix:")
    refused: dict[str, str] = {}
    with grpc.insecure_channel(target) as channel:
        stub = ControlStub(channel)
        for name, hostile in _hostile_tars(outside, victim).items():
            for sent_as in ("context", "cache"):
                if sent_as == "context":
                    parts = [control_pb2.BuildRequest(context_chunk=hostile)]
                else:
                    chunk = control_pb2.CacheChunk(index=0, data=hostile)
                    parts = [control_pb2.BuildRequest(cache_chunk=chunk)]
                header.build_id = f"{name}-{sent_as}"
                requests = [control_pb2.BuildRequest(header=header), *parts]
                try:
                    responses = list(stub.Build(iter(requests)))
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
                    details = error.details() or ""
                    assert "\n" not in details and "Traceback" not in details
                    refused[f"{name} as {sent_as}"] = details
                else:
                    result = responses[-1].result
                    assert not result.error, (name, sent_as, result.error)
                assert list(outside.iterdir()) == [], (name, sent_as)
                assert victim.read_text() == "original\n", (name, sent_as)
                assert os.stat("/etc/passwd").st_nlink == passwd.st_nlink
                assert list((daemon_state / "daemon-builds").glob("build-*")) == []
    # Absolute names and paths through symlinks stay inside (untar resolves them in the
    # root); what cannot be neutralised is refused with a line naming the entry.
    for sent_as in ("context", "cache"):
        assert "points outside" in refused[f"dot-dot as {sent_as}"]
        assert "entry 'disk' is a block-device" in refused[f"device as {sent_as}"]
        assert "is a char-device" in refused[f"device-outside as {sent_as}"]
    for name in ("hardlink-passwd", "hardlink-write"):
        assert "hardlink to missing" in refused[f"{name} as context"]
        assert "is a hardlink: a local cache holds files" in refused[f"{name} as cache"]
    # A cache's files are read by the daemon: a symlink there would read its own host.
    for name in ("symlink-blob", "symlink"):
        assert "is a symlink: a local cache holds files and" in refused[f"{name} as cache"]
    assert refused["device as cache"].startswith(
        f"the local cache --cache-from 'type=local,src={tmp_path / 'cache'}': "
    )
    _builds_left_nothing(daemon_state)


MANY_FILES = """\
ARG BASE
FROM ${BASE}
RUN mkdir /d && for i in $(seq 1 400); do head -c 100000 /dev/urandom > /d/$i; done
ARG READ
RUN cat /d/${READ} > /dev/null && echo read
"""


def test_builds_that_send_the_same_local_cache_one_after_another_all_hit_it(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    """A CI runner's jobs each restore the cache and send it: the daemon's filesystem
    process, warm between builds, opened a layer from the first job's copy, and later
    jobs read it through that copy, so it outlives the first job."""
    address, daemon_state, _ = daemon
    context = write_context(tmp_path / "context", MANY_FILES, {})
    cache = tmp_path / "ci-cache"
    build = ["build", "--progress=rawjson", "--build-arg", f"BASE={base_image}", str(context)]
    exported = _lazybuild(
        "--state-dir",
        str(tmp_path / "local-state"),
        *build,
        "--build-arg",
        "READ=1",
        "--cache-to",
        f"type=local,dest={cache}",
    )
    assert exported.returncode == 0, exported.stderr
    for read in ("7", "395", "200"):
        done = _lazybuild(
            *build,
            "--builder",
            address,
            "--build-arg",
            f"READ={read}",
            "--cache-from",
            f"type=local,src={cache}",
        )
        assert done.returncode == 0, done.stderr
        steps = _completed(done)
        assert next(cached for name, cached in steps.items() if "seq 1 400" in name), read
        assert [m for m in _messages(done) if m.startswith("warning")] == [], read
    # The copies share their blobs.
    blobs = {p.name for p in (cache / "blobs" / "sha256").iterdir()}
    stored = {p.name for p in (daemon_state / "daemon-builds" / "imported-blobs").iterdir()}
    assert stored <= blobs
    _builds_left_nothing(daemon_state)


# --- buildx flags CI scripts use (issue 18) ------------------------------------------------

_FLAGS_DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS deps
RUN echo deps > /deps
FROM ${BASE} AS final
COPY --from=deps /deps /deps
RUN grep flags- /etc/hosts > /hosts.txt; \\
    df -k /dev/shm | awk 'NR == 2 { print $2 }' > /shm.txt; \\
    { ulimit -Sn; ulimit -Hn; } > /nofile.txt
RUN cat /proc/sys/kernel/random/uuid > /run-id
"""


def test_container_flags_annotations_no_cache_filter_through_the_daemon(
    tmp_path: Path, base_image: str, daemon: Served
) -> None:
    """--add-host, --shm-size, --ulimit, --annotation, --allow and BUILDKIT_PROGRESS reach
    a build through the daemon as they reach a local one (checked against the same
    values in tests/e2e/test_build_differential.py::test_add_host_shm_size_ulimit); a
    second build with --no-cache-filter final reruns that stage's steps only (buildx:
    "Do not cache specified stages")."""
    address, daemon_state, _ = daemon
    context = write_context(tmp_path / "context", _FLAGS_DOCKERFILE, {})
    flags = [
        *("--add-host", "flags-one.test:10.1.2.3", "--add-host", "flags-six.test=::1"),
        *("--shm-size", "128m", "--ulimit", "nofile=1000:2000", "--allow", "network.host"),
        *("--annotation", "org.example.a=1", "--annotation", "manifest:org.example.b=2"),
        "--no-optimize",  # the workload's profile is no part of this and costs time
    ]

    def build(name: str, *extra: str) -> dict[str, bool]:
        out = tmp_path / name
        done = _lazybuild(
            *("build", "--builder", address, "--build-arg", f"BASE={base_image}", *flags),
            *("-o", f"type=local,dest={out / 'rootfs'}"),
            *("-o", f"type=oci,dest={out / 'oci'},tar=false", *extra, str(context)),
            env={**os.environ, "BUILDKIT_PROGRESS": "rawjson"},
        )
        assert done.returncode == 0, done.stderr
        return _completed(done)  # rawjson events: BUILDKIT_PROGRESS chose the mode

    first = build("first")
    rootfs = tmp_path / "first" / "rootfs"
    assert (rootfs / "hosts.txt").read_text() == ("10.1.2.3\tflags-one.test\n::1\tflags-six.test\n")
    assert (rootfs / "shm.txt").read_text() == "131072\n"
    assert (rootfs / "nofile.txt").read_text() == "1000\n2000\n"
    layout = tmp_path / "first" / "oci"
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    assert manifest["annotations"] == {"org.example.a": "1", "org.example.b": "2"}
    assert not any(first.values())

    second = build("second", "--no-cache-filter", "final")
    assert {name for name, cached in second.items() if not cached and "RUN" in name} == {
        name for name in second if name.startswith("[final") and "RUN" in name
    }
    assert second[next(name for name in second if "echo deps" in name)]
    run_ids = [(tmp_path / n / "rootfs" / "run-id").read_text() for n in ("first", "second")]
    assert run_ids[0] != run_ids[1]
    _builds_left_nothing(daemon_state)
