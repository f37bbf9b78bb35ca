"""config.json as data: Docker's defaults, network modes, process fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lazybuild.executor.mounts import MountSpec
from lazybuild.executor.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    MASKED_PATHS,
    READONLY_PATHS,
    ProcessSpec,
    generate_spec,
)
from lazybuild.executor.users import ResolvedUser

APP = ResolvedUser(1000, 1000, (10, 29), "/home/app", "app")


def make_spec(**overrides: Any) -> dict[str, Any]:
    process = overrides.pop("process", ProcessSpec(["sh", "-c", "true"], ["FOO=bar"], "/src", APP))
    arguments: dict[str, Any] = {
        "rootfs": Path("/run/rootfs"),
        "process": process,
        "hostname": "box",
        "network": "none",
        **overrides,
    }
    return generate_spec(**arguments)


def namespaces(spec: dict[str, Any]) -> list[str]:
    return [ns["type"] for ns in spec["linux"]["namespaces"]]


def test_network_none_has_its_own_network_namespace() -> None:
    spec = make_spec(network="none")
    assert namespaces(spec) == ["pid", "ipc", "uts", "mount", "network"]
    assert spec["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"] == "0"


def test_network_host_shares_the_hosts() -> None:
    spec = make_spec(network="host")
    assert namespaces(spec) == ["pid", "ipc", "uts", "mount"]
    assert "sysctl" not in spec["linux"]  # would change the host's settings


def test_process_fields() -> None:
    process = make_spec()["process"]
    assert process["args"] == ["sh", "-c", "true"]
    assert process["cwd"] == "/src"
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 29]}
    assert process["env"] == [f"PATH={DEFAULT_PATH}", "FOO=bar", "HOME=/home/app"]
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is False
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 524288}]


def test_image_path_and_home_are_kept() -> None:
    process = ProcessSpec(["true"], ["PATH=/opt/bin", "HOME=/h"], "/", APP, terminal=True)
    env = make_spec(process=process)["process"]["env"]
    assert env == ["PATH=/opt/bin", "HOME=/h", "TERM=xterm"]


def test_default_capabilities_are_dockers() -> None:
    capabilities = make_spec()["process"]["capabilities"]
    assert len(DEFAULT_CAPABILITIES) == 14
    for kind in ("bounding", "effective", "permitted"):
        assert capabilities[kind] == list(DEFAULT_CAPABILITIES)
    assert "inheritable" not in capabilities
    assert "ambient" not in capabilities
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES


def test_masked_and_readonly_paths() -> None:
    linux = make_spec()["linux"]
    assert linux["maskedPaths"] == list(MASKED_PATHS)
    assert {"/proc/kcore", "/proc/keys", "/sys/firmware"} <= set(MASKED_PATHS)
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    assert "/proc/sys" in READONLY_PATHS


def test_default_mounts_then_extra_mounts() -> None:
    extra = MountSpec("/etc/hosts", "/bundle/etc/hosts")
    mounts = make_spec(extra_mounts=[extra])["mounts"]
    destinations = [m["destination"] for m in mounts]
    assert destinations == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/sys/fs/cgroup",
        "/dev/mqueue",
        "/dev/shm",
        "/etc/hosts",
    ]
    by_destination = {m["destination"]: m for m in mounts}
    assert "ro" in by_destination["/sys"]["options"]
    assert by_destination["/dev/shm"]["type"] == "tmpfs"
    assert by_destination["/etc/hosts"] == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": "/bundle/etc/hosts",
        "options": ["rbind", "rprivate"],
    }


def test_extra_mount_replaces_default_on_same_destination() -> None:
    big_shm = MountSpec("/dev/shm", "shm", "tmpfs", ("mode=1777", "size=1g"))
    mounts = make_spec(extra_mounts=[big_shm])["mounts"]
    shm = [m for m in mounts if m["destination"] == "/dev/shm"]
    assert shm == [big_shm.to_oci()]


def test_root_and_hostname() -> None:
    spec = make_spec(readonly_rootfs=True)
    assert spec["root"] == {"path": "/run/rootfs", "readonly": True}
    assert spec["hostname"] == "box"
    assert "cgroupsPath" not in spec["linux"]  # the runner adds it, knowing the id


def test_devices_deny_by_default() -> None:
    rules = make_spec()["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"network": "bridge"}, "network"),
        ({"process": ProcessSpec([], [], "/", APP)}, "argument"),
        ({"process": ProcessSpec(["true"], [], "src", APP)}, "absolute"),
    ],
)
def test_invalid_input(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**change)
