"""The daemon's configuration: defaults, a full file, and one clear line for each way a
file can be wrong."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from lazybuild.daemon.config import DEFAULT_ADDRESS, ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lazybuild.toml"
    path.write_text(text)
    return path


def _tls_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    for path in files.values():
        path.write_text("-----BEGIN-----\n")
    return files


def test_defaults_need_no_file() -> None:
    config = load_config(None)
    assert config.addresses == (DEFAULT_ADDRESS,)
    assert config.tls is None
    assert config.max_parallel_builds >= 1
    assert config.state_dir.is_absolute()
    assert config.gc.keep_bytes is None
    assert config.gc.keep_duration is None


def test_a_full_file(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path)
    path = _write(
        tmp_path,
        f"""
addresses = ["unix:///run/lb/lb.sock", "tcp://127.0.0.1:9443", "tcp://[::1]:9444"]
state_dir = "{tmp_path / "state"}"
cache_size = "20GiB"
max_parallel_builds = 8
insecure_registries = ["registry.local:5000"]
docker_config = "/etc/lazybuild/docker-config.json"
socket_group = 0

[tls]
cert = "{tls["cert"]}"
key = "{tls["key"]}"
ca = "{tls["ca"]}"

[gc]
keep_bytes = "512 MB"
keep_duration = "7d"
""",
    )
    config = load_config(path)
    unix, tcp = config.unix_and_tcp()
    assert [a.socket_path for a in unix] == [Path("/run/lb/lb.sock")]
    assert [a.grpc_target for a in tcp] == ["127.0.0.1:9443", "[::1]:9444"]
    assert config.cache_size == 20 << 30
    assert config.gc.keep_bytes == 512 << 20
    assert config.gc.keep_duration == timedelta(days=7)
    assert config.max_parallel_builds == 8
    assert config.insecure_registries == ("registry.local:5000",)
    assert config.docker_config == Path("/etc/lazybuild/docker-config.json")
    assert config.socket_gid == 0
    assert config.tls is not None and config.tls.ca == tls["ca"]


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'addresses = ["unix:///a.sock"]\nmax_parallel_builds = 2\n')
    config = load_config(path, {"addresses": ["unix:///b.sock"], "state_dir": None})
    assert config.addresses == ("unix:///b.sock",)
    assert config.max_parallel_builds == 2


def test_a_numeric_socket_group_from_the_command_line_is_a_gid() -> None:
    assert load_config(None, {"socket_group": "65534"}).socket_gid == 65534


def test_tls_flags_complete_the_file_s_tls_section(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path)
    path = _write(tmp_path, f'addresses = ["tcp://127.0.0.1:0"]\n[tls]\ncert = "{tls["cert"]}"\n')
    config = load_config(path, {"tls": {"key": tls["key"], "ca": tls["ca"]}})
    assert config.tls is not None and config.tls.key == tls["key"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('addresses = ["tcp://0.0.0.0:9443"]\n', "tcp://0.0.0.0:9443 needs tls.cert, tls.key and"),
        ('addresses = ["http://x:1"]\n', "addresses[0]: 'http://x:1' is not unix:///PATH or"),
        ('addresses = ["unix://relative.sock"]\n', "addresses[0]: 'unix://relative.sock': a unix"),
        ("addresses = []\n", "addresses: "),
        ('[gc]\nkeep_bytes = "lots"\n', "gc.keep_bytes: 'lots' is not a size"),
        ("[gc]\nkeep_bytes = -1\n", "gc.keep_bytes: Input should be greater than or equal to 0"),
        ('[gc]\nkeep_duration = "a week"\n', "gc.keep_duration: 'a week' is not a duration"),
        ("[gc]\nkeep_duration = 0\n", "gc.keep_duration: must be longer than 0s"),
        ("[gc]\nkeep_byts = 1\n", "gc.keep_byts: unknown key"),
        ("max_parallel_builds = 0\n", "max_parallel_builds: Input should be greater than"),
        ('max_parallel_builds = "many"\n', "max_parallel_builds: Input should be a valid integer"),
        ('state_dir = "relative/state"\n', "state_dir: relative/state is not an absolute path"),
        ('socket_group = "no-such-group-here"\n', "socket_group: no group named"),
        ("[tls]\ncert = '/nonexistent/c.pem'\n", "tls.cert: /nonexistent/c.pem is not a file"),
        ("addresses = [\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read: No such file"):
        load_config(tmp_path / "missing.toml")


def test_a_bad_flag_names_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"^command line: addresses\[0\]: 'tcp://x' is not"):
        load_config(None, {"addresses": ["tcp://x"]})


def test_serve_with_a_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[gc]\nkeep_bytes = 'lots'\n")
    done = subprocess.run(
        [sys.executable, "-m", "lazybuild", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"lazybuild: error: {path}: gc.keep_bytes: 'lots' is not a size "
        "(e.g. 10737418240, 512MiB, 10GiB)"
    ]
