"""A private dockerd (Debian's docker.io 20.10) on its own socket and data root.

Networking is off (no bridge, no iptables), so it does not touch the host's network
setup; containers are run with `--network none`. Registries on 127.0.0.0/8 are
treated as insecure (plain HTTP) by dockerd without configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import procs

DOCKERD = "/usr/sbin/dockerd"
# /usr/local/bin may hold a different docker CLI; use the one matching the daemon.
DOCKER_CLI = "/usr/bin/docker"


class Dockerd:
    """dockerd with everything under one temp dir; `.docker(*args)` runs the CLI on it."""

    def __init__(self, workdir: Path | None = None, storage_driver: str = "overlay2") -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lazybuild-dockerd-"))
        self.data_root = self.workdir / "data"
        # exec-root holds containerd's sockets: keep the path short (108-byte limit).
        self.exec_root = Path(tempfile.mkdtemp(prefix="lbd-", dir="/run"))
        self.socket = self.workdir / "docker.sock"
        self.host = f"unix://{self.socket}"
        # The CLI's config dir (auths for write_docker_config), isolated from ~/.docker.
        self.config_dir = self.workdir / "cli-config"
        self.storage_driver = storage_driver
        self.log_path = self.workdir / "dockerd.log"
        self._daemon: procs.Daemon | None = None

    def argv(self) -> list[str]:
        daemon_json = self.workdir / "daemon.json"
        # An explicit empty config keeps /etc/docker/daemon.json out of the tests.
        daemon_json.write_text(json.dumps({}))
        return [
            DOCKERD,
            "--config-file", str(daemon_json),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.workdir / "dockerd.pid"),
            "-H", self.host,
            "--storage-driver", self.storage_driver,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> Dockerd:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self._daemon = procs.start("dockerd", self.argv(), self.log_path)
        try:
            self._daemon.wait_ready(
                lambda: self.docker("info", check=False, timeout=10).returncode == 0,
                timeout=timeout,
                what="answering `docker info`",
            )
        except BaseException:
            self.stop()  # the error message already carries the log tail
            raise
        return self

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        return procs.run([DOCKER_CLI, *args], check=check, timeout=timeout, env=self.env())

    def stop(self) -> None:
        if self._daemon is not None:
            if self._daemon.running():
                # Containers would otherwise keep their mounts and shims alive.
                listing = self.docker("ps", "-aq", check=False, timeout=20)
                if listing.stdout.split():
                    self.docker("rm", "-f", *listing.stdout.split(), check=False, timeout=60)
            # dockerd needs time to stop its containerd; then the helpers are killed.
            self._daemon.stop(grace=20)
            self._daemon = None
        procs.kill_processes_mentioning(str(self.exec_root))
        procs.kill_processes_mentioning(str(self.data_root))
        procs.unmount_all_under(self.data_root)
        procs.unmount_all_under(self.exec_root)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
