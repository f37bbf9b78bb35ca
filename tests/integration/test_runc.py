"""Containers with runc over an overlay of a real Debian rootfs (needs root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from lazybuild.executor import (
    ContainerError,
    ProcessSpec,
    RunResult,
    generate_spec,
    prepare_etc_files,
    resolve_user,
    run_container,
)
from lazybuild.executor.runc import DEFAULT_RUNC
from lazybuild.executor.spec import Network
from lazybuild.snapshot import is_mounted, mount_overlay, unmount
from lazybuild.snapshot.mountinfo import mounts_under

pytestmark = pytest.mark.root


@dataclass
class Sandbox:
    rootfs: Path  # the merged overlay; writes land in `upper`
    upper: Path
    state_root: Path
    bundles: Path

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [DEFAULT_RUNC, "--root", str(self.state_root), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)

    def containers(self) -> list[str]:
        listed = self.runc("list", "--format", "json").stdout.strip()
        return [c["id"] for c in json.loads(listed or "null") or []]

    def status(self, container_id: str) -> str | None:
        state = self.runc("state", container_id)
        return json.loads(state.stdout)["status"] if state.returncode == 0 else None


@pytest.fixture
def sandbox(tmp_path: Path, debian_rootfs: Path) -> Iterator[Sandbox]:
    """Debian (read-only cache) under a tmp upper dir; no container or mount survives."""
    if not os.access(DEFAULT_RUNC, os.X_OK):
        pytest.skip(f"{DEFAULT_RUNC} is not installed")
    dirs = {name: tmp_path / name for name in ("rootfs", "upper", "work", "state", "bundles")}
    for directory in dirs.values():
        directory.mkdir()
    mount_overlay(dirs["rootfs"], [debian_rootfs], upper=dirs["upper"], work=dirs["work"])
    box = Sandbox(dirs["rootfs"], dirs["upper"], dirs["state"], dirs["bundles"])
    try:
        yield box
    finally:
        for leftover in box.containers():
            box.runc("delete", "--force", leftover)
        for point in mounts_under(tmp_path):
            unmount(point, lazy=True)


def container_spec(
    box: Sandbox,
    bundle: Path,
    args: Sequence[str],
    *,
    user: str = "",
    env: Sequence[str] = (),
    cwd: str = "/",
    network: Network = "none",
) -> dict[str, Any]:
    process = ProcessSpec(args, env, cwd, resolve_user(box.rootfs, user))
    return generate_spec(
        rootfs=box.rootfs,
        process=process,
        hostname="lazybox",
        network=network,
        extra_mounts=prepare_etc_files(bundle, "lazybox", network),
    )


def run(
    box: Sandbox,
    args: Sequence[str],
    *,
    user: str = "",
    env: Sequence[str] = (),
    cwd: str = "/",
    network: Network = "none",
) -> tuple[RunResult, str]:
    """Run to completion; the result and what the process wrote to stdout."""
    bundle = box.bundles / "c1"
    out_path = box.bundles.parent / "stdout"
    with out_path.open("w+b") as out:

        async def main() -> RunResult:
            return await run_container(
                container_id="c1",
                bundle_dir=bundle,
                spec=container_spec(
                    box, bundle, args, user=user, env=env, cwd=cwd, network=network
                ),
                stdin=subprocess.DEVNULL,
                stdout=out.fileno(),
                state_root=box.state_root,
            )

        result = trio.run(main)
    assert not bundle.exists()
    assert box.containers() == []
    return result, out_path.read_text()


async def wait_until_running(box: Sandbox, container_id: str) -> None:
    with trio.fail_after(20):
        while await trio.to_thread.run_sync(box.status, container_id) != "running":
            await trio.sleep(0.05)


def test_echo_output_captured(sandbox: Sandbox) -> None:
    assert run(sandbox, ["echo", "hi"]) == (RunResult(0, None), "hi\n")


def test_exit_code_passes_through(sandbox: Sandbox) -> None:
    result, _ = run(sandbox, ["sh", "-c", "exit 3"])
    assert result == RunResult(3, None)


def test_user_nobody(sandbox: Sandbox) -> None:
    _, output = run(sandbox, ["sh", "-c", "id -u; id -g; echo $HOME"], user="nobody")
    assert output == "65534\n65534\n/nonexistent\n"


def test_env_and_created_working_dir(sandbox: Sandbox) -> None:
    _, output = run(
        sandbox, ["sh", "-c", 'echo "$FOO"; pwd; echo $PATH'], env=["FOO=bar baz"], cwd="/src/app"
    )
    assert output.splitlines() == [
        "bar baz",
        "/src/app",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    assert (sandbox.upper / "src" / "app").is_dir()  # created in the writable layer


def test_network_none_has_only_loopback(sandbox: Sandbox) -> None:
    _, output = run(sandbox, ["cat", "/proc/net/dev"])
    assert _interfaces(output) == {"lo"}


def test_host_network_sees_host_interfaces(sandbox: Sandbox) -> None:
    _, output = run(sandbox, ["cat", "/proc/net/dev"], network="host")
    assert _interfaces(output) == _interfaces(Path("/proc/net/dev").read_text())


def test_hostname_and_etc_files(sandbox: Sandbox, debian_rootfs: Path) -> None:
    _, output = run(sandbox, ["sh", "-c", "hostname; cat /etc/hostname; grep lazybox /etc/hosts"])
    assert output == "lazybox\nlazybox\n127.0.0.1\tlazybox\n"
    # The image has no /etc/hosts; the empty mount point runc made is not left behind.
    assert not (debian_rootfs / "etc" / "hosts").exists()
    assert not (sandbox.upper / "etc" / "hosts").exists()


def test_rootfs_mounted_inside_bundle_survives(sandbox: Sandbox, debian_rootfs: Path) -> None:
    # buildkit's layout: bundle/rootfs. Removing the bundle must not delete through it.
    bundle = sandbox.bundles / "inside"
    inner_root = bundle / "rootfs"
    upper, work = sandbox.bundles.parent / "upper2", sandbox.bundles.parent / "work2"
    for directory in (inner_root, upper, work):
        directory.mkdir(parents=True)
    mount_overlay(inner_root, [debian_rootfs], upper=upper, work=work)
    box = Sandbox(inner_root, upper, sandbox.state_root, sandbox.bundles)

    async def main() -> RunResult:
        return await run_container(
            container_id="inside",
            bundle_dir=bundle,
            spec=container_spec(box, bundle, ["touch", "/made-by-the-run"]),
            stdin=subprocess.DEVNULL,
            state_root=sandbox.state_root,
        )

    assert trio.run(main) == RunResult(0, None)
    assert is_mounted(inner_root)
    assert (inner_root / "made-by-the-run").exists()
    assert sorted(p.name for p in bundle.iterdir()) == ["rootfs"]


def test_killed_by_signal_is_128_plus_n(sandbox: Sandbox) -> None:
    bundle = sandbox.bundles / "victim"

    async def main() -> RunResult:
        async with trio.open_nursery() as nursery:
            results: list[RunResult] = []

            async def run_victim() -> None:
                results.append(
                    await run_container(
                        container_id="victim",
                        bundle_dir=bundle,
                        spec=container_spec(sandbox, bundle, ["sleep", "60"]),
                        stdin=subprocess.DEVNULL,
                        state_root=sandbox.state_root,
                    )
                )

            nursery.start_soon(run_victim)
            await wait_until_running(sandbox, "victim")
            await trio.to_thread.run_sync(sandbox.runc, "kill", "victim", "KILL")
        return results[0]

    assert trio.run(main) == RunResult(137, 9)
    assert sandbox.containers() == []
    assert not bundle.exists()


def test_cancellation_leaves_no_container_and_no_mount(sandbox: Sandbox) -> None:
    bundle = sandbox.bundles / "cancelled"

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def cancel_when_running() -> None:
                await wait_until_running(sandbox, "cancelled")
                nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_when_running)
            await run_container(
                container_id="cancelled",
                bundle_dir=bundle,
                spec=container_spec(sandbox, bundle, ["sleep", "60"]),
                stdin=subprocess.DEVNULL,
                state_root=sandbox.state_root,
            )
            pytest.fail("run_container returned although it was cancelled")

    trio.run(main)
    assert sandbox.containers() == []
    assert not bundle.exists()
    # Nothing of the container still uses the rootfs: a plain unmount succeeds.
    unmount(sandbox.rootfs)
    assert not is_mounted(sandbox.rootfs)
    assert not _cgroup_dirs("cancelled")


def test_missing_executable_is_a_clear_error(sandbox: Sandbox) -> None:
    with pytest.raises(ContainerError, match=r"no-such-tool.*not found"):
        run(sandbox, ["no-such-tool"])
    assert sandbox.containers() == []
    assert not (sandbox.bundles / "c1").exists()


def test_missing_working_dir_on_read_only_rootfs(sandbox: Sandbox, debian_rootfs: Path) -> None:
    read_only = sandbox.bundles.parent / "ro"
    read_only.mkdir()
    mount_overlay(read_only, [debian_rootfs])
    box = Sandbox(read_only, sandbox.upper, sandbox.state_root, sandbox.bundles)
    with pytest.raises(ContainerError, match=r"working directory /nowhere.*Read-only"):
        run(box, ["true"], cwd="/nowhere")


def _interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


def _cgroup_dirs(container_id: str) -> list[Path]:
    """The container's cgroup in every hierarchy, under ours (cgroupsPath is relative)."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for hierarchy in (controllers.removeprefix("name="), "unified"):
            candidate = Path("/sys/fs/cgroup", hierarchy, path.lstrip("/"), "lazybuild")
            if (candidate / container_id).exists():
                found.append(candidate / container_id)
    return found


def test_sigterm_is_forwarded_to_the_container(sandbox: Sandbox) -> None:
    bundle = sandbox.bundles / "forwarded"
    script = 'trap "exit 42" TERM; sleep 60 & wait'  # pid 1 only dies of handled signals

    async def main() -> RunResult:
        async with trio.open_nursery() as nursery:
            results: list[RunResult] = []

            async def run_it() -> None:
                results.append(
                    await run_container(
                        container_id="forwarded",
                        bundle_dir=bundle,
                        spec=container_spec(sandbox, bundle, ["sh", "-c", script]),
                        stdin=subprocess.DEVNULL,
                        state_root=sandbox.state_root,
                    )
                )

            nursery.start_soon(run_it)
            await wait_until_running(sandbox, "forwarded")
            assert _cgroup_dirs("forwarded")
            await trio.sleep(0.3)  # let sh install its trap
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <lazybuild pid>` would
        return results[0]

    assert trio.run(main) == RunResult(42, None)
    assert not _cgroup_dirs("forwarded")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_early_cancellation_cleans_up(sandbox: Sandbox, delay: float) -> None:
    # Cancelled while runc is still creating the container: kill must wait for it.
    bundle = sandbox.bundles / "early"

    async def main() -> None:
        with trio.move_on_after(delay):
            await run_container(
                container_id="early",
                bundle_dir=bundle,
                spec=container_spec(sandbox, bundle, ["sleep", "60"]),
                stdin=subprocess.DEVNULL,
                state_root=sandbox.state_root,
            )

    trio.run(main)
    assert sandbox.containers() == []
    assert not bundle.exists()
    assert not _cgroup_dirs("early")
    unmount(sandbox.rootfs)
