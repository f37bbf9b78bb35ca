"""/etc/hosts, /etc/hostname and /etc/resolv.conf for a container.

They are written into the bundle and bind-mounted over the image's files, as Docker
does, so the image's own copies stay untouched (and out of the layer a RUN produces).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lazybuild.executor.mounts import MountSpec

HOST_HOSTS = Path("/etc/hosts")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")

_LOOPBACK_HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""

# What Docker falls back to when the host has no usable resolv.conf.
_FALLBACK_RESOLV_CONF = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def prepare_etc_files(
    bundle_dir: Path,
    hostname: str,
    network: str,
    extra_hosts: Sequence[tuple[str, str]] = (),
) -> list[MountSpec]:
    """Write the files under `bundle_dir/etc` and return the mounts that place them.

    Host networking sees the host's hosts and resolv.conf; "none" has only loopback,
    so it gets a loopback-only hosts file (resolv.conf is copied for both: harmless
    without a network, and what Docker does). ``extra_hosts`` (``--add-host``: name,
    address) are appended whatever the network, as BuildKit and Docker append them.
    """
    if network not in ("host", "none"):
        raise ValueError(f"unknown network mode {network!r}")
    etc = bundle_dir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    hosts = _host_file(HOST_HOSTS, _LOOPBACK_HOSTS) if network == "host" else _LOOPBACK_HOSTS
    files = {
        "hosts": _with_extra_hosts(_with_hostname(hosts, hostname), extra_hosts),
        "hostname": hostname + "\n",
        "resolv.conf": _host_file(HOST_RESOLV_CONF, _FALLBACK_RESOLV_CONF),
    }
    mounts = []
    for name, content in files.items():
        path = etc / name
        path.write_text(content)
        path.chmod(0o644)  # readable by any container user, whatever our umask
        mounts.append(MountSpec(f"/etc/{name}", str(path)))
    return mounts


def _host_file(path: Path, fallback: str) -> str:
    try:
        return path.read_text()
    except OSError:
        return fallback


def _with_hostname(hosts: str, hostname: str) -> str:
    """Make the container's own name resolve (sudo, hostname -f and Java want that)."""
    names = {name for line in hosts.splitlines() for name in line.split("#")[0].split()[1:]}
    if hostname in names:
        return hosts
    return hosts.rstrip("\n") + f"\n127.0.0.1\t{hostname}\n"


def _with_extra_hosts(hosts: str, extra_hosts: Sequence[tuple[str, str]]) -> str:
    if not extra_hosts:
        return hosts
    lines = "".join(f"{address}\t{name}\n" for name, address in extra_hosts)
    return hosts.rstrip("\n") + "\n" + lines
