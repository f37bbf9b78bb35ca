"""/etc/hosts, /etc/hostname, /etc/resolv.conf written into the bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.executor import etcfiles
from lazybuild.executor.etcfiles import prepare_etc_files


@pytest.fixture
def host_etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    etc = tmp_path / "host-etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n10.0.0.5 buildhost\n")
    (etc / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    monkeypatch.setattr(etcfiles, "HOST_HOSTS", etc / "hosts")
    monkeypatch.setattr(etcfiles, "HOST_RESOLV_CONF", etc / "resolv.conf")
    return etc


def test_none_network_gets_loopback_hosts(tmp_path: Path, host_etc: Path) -> None:
    mounts = prepare_etc_files(tmp_path / "bundle", "box", "none")
    assert [m.destination for m in mounts] == ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
    hosts = (tmp_path / "bundle/etc/hosts").read_text()
    assert "buildhost" not in hosts
    assert "127.0.0.1\tlocalhost" in hosts
    assert hosts.endswith("127.0.0.1\tbox\n")
    assert (tmp_path / "bundle/etc/hostname").read_text() == "box\n"
    assert (tmp_path / "bundle/etc/resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    for mount in mounts:
        assert mount.type == "bind"
        assert Path(mount.source).stat().st_mode & 0o777 == 0o644


def test_host_network_gets_hosts_files(tmp_path: Path, host_etc: Path) -> None:
    prepare_etc_files(tmp_path, "buildhost", "host")
    # The host's file already names it: nothing appended.
    assert (tmp_path / "etc/hosts").read_text() == (host_etc / "hosts").read_text()


def test_missing_host_resolv_conf_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcfiles, "HOST_RESOLV_CONF", tmp_path / "absent")
    prepare_etc_files(tmp_path, "box", "host")
    assert "nameserver 8.8.8.8" in (tmp_path / "etc/resolv.conf").read_text()


def test_unknown_network(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bridge"):
        prepare_etc_files(tmp_path, "box", "bridge")
