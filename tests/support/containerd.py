"""A private containerd (Debian's 1.6) for running and converting images with ctr / ctr-remote.

It has its own root, state and socket under a temp dir, no CRI plugin, and runs
containers with the runc v2 shim and /usr/sbin/runc (passed per container with
--runc-binary because without the CRI plugin there is no config key for it).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import procs

RUNC = "/usr/sbin/runc"
NAMESPACE = "lazybuild-test"

CONFIG_TEMPLATE = """\
version = 2
root = "{root}"
state = "{state}"
# No Kubernetes here; the other plugins only log noise when their backing is missing.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""


class Containerd:
    """containerd on a private socket; `.ctr()` / `.ctr_remote()` talk to it."""

    def __init__(self, workdir: Path | None = None, namespace: str = NAMESPACE) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lazybuild-containerd-"))
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        # Unix socket paths are limited to 108 bytes, so keep it short and absolute.
        self.socket = self.state / "c.sock"
        self.namespace = namespace
        self.log_path = self.workdir / "containerd.log"
        self._daemon: procs.Daemon | None = None

    def start(self, timeout: float = 30.0) -> Containerd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(
            CONFIG_TEMPLATE.format(root=self.root, state=self.state, socket=self.socket)
        )
        self._daemon = procs.start(
            "containerd", ["containerd", "--config", str(config)], self.log_path
        )
        try:
            self._daemon.wait_ready(
                lambda: self.ctr("version", check=False, timeout=5).returncode == 0,
                timeout=timeout,
                what="answering `ctr version`",
            )
        except BaseException:
            self.stop()  # the error message already carries the log tail
            raise
        return self

    def argv(self, tool: str, *args: str, namespace: str | None = None) -> list[str]:
        """Command line for `tool` ("ctr" or "ctr-remote") talking to this daemon."""
        return [
            tool,
            "--address",
            str(self.socket),
            "--namespace",
            namespace or self.namespace,
            *args,
        ]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        return procs.run(self.argv("ctr", *args), check=check, timeout=timeout)

    def ctr_remote(
        self, *args: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        return procs.run(self.argv("ctr-remote", *args), check=check, timeout=timeout)

    def pull(self, ref: str, user: str | None = None) -> None:
        """Pull over plain HTTP (all fixture registries are http on loopback)."""
        self.ctr("images", "pull", "--plain-http", *_user_args(user), ref)

    def push(self, ref: str, user: str | None = None) -> None:
        self.ctr("images", "push", "--plain-http", *_user_args(user), ref)

    def convert_to_estargz(self, src_ref: str, dst_ref: str, user: str | None = None) -> None:
        """Pull `src_ref`, convert it with ctr-remote to eStargz (OCI media types), push."""
        self.pull(src_ref, user)
        self.convert_local(src_ref, dst_ref)
        self.push(dst_ref, user)

    def convert_local(self, src_ref: str, dst_ref: str) -> None:
        """Only the conversion step, for an image already in the content store."""
        self.ctr_remote("image", "convert", "--estargz", "--oci", src_ref, dst_ref)

    def run_image(self, ref: str, *cmd: str, user: str | None = None, pull: bool = True) -> str:
        """Run `cmd` in a fresh container of `ref` (no network) and return its stdout."""
        if pull:
            self.pull(ref, user)
        # `ctr run` without a terminal copies the task's output from FIFOs and, under load,
        # can see the task exit and remove it before the copy starts: exit 0, no output
        # (seen in full-suite runs, never alone). A successful run that printed nothing is
        # therefore run again, a few times; real failures still raise on their exit code.
        for _ in range(3):
            container_id = f"lazybuild-test-{uuid.uuid4().hex[:12]}"
            completed = self.ctr("run", "--rm", "--runc-binary", RUNC, ref, container_id, *cmd)
            if completed.stdout:
                break
        return completed.stdout

    @contextmanager
    def mounted_image(self, ref: str, target: Path) -> Iterator[Path]:
        """The root filesystem containerd unpacked for ``ref`` (pulled already), mounted
        read-only at ``target`` (a view snapshot of its layers: nothing a runtime adds)."""
        target.mkdir(parents=True, exist_ok=True)
        self.ctr("images", "mount", ref, str(target))
        try:
            yield target
        finally:
            self.ctr("images", "unmount", "--rm", str(target))

    def stop(self) -> None:
        if self._daemon is not None:
            if self._daemon.running():
                self._kill_tasks()
            self._daemon.stop()
            self._daemon = None
        # Shims run in their own process groups; find ours by the socket they serve.
        procs.kill_processes_mentioning(str(self.socket))
        procs.unmount_all_under(self.workdir)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_tasks(self) -> None:
        listing = self.ctr("tasks", "list", "-q", check=False, timeout=20)
        for task in listing.stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=20)
            self.ctr("tasks", "delete", "-f", task, check=False, timeout=20)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_args(user: str | None) -> list[str]:
    return ["--user", user] if user else []
