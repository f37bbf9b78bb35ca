"""``lazybuild serve`` as a real process: its API over a unix socket and over mutual
TLS, who it refuses, how it stops and how it recovers from a SIGKILL."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lazybuild.api.control.v1 import control_pb2
from lazybuild.api.control.v1.control_pb2_grpc import ControlStub

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the daemon needs root")


class Daemon:
    """A started ``lazybuild serve``; its log lines are read as they come, by a thread."""

    def __init__(self, process: subprocess.Popen[str], state_dir: Path) -> None:
        self.process = process
        self.state_dir = state_dir
        self.log: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.log.append(line)
                self._changed.notify_all()
        self.process.stderr.close()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first log line holding ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.log if text in line), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    pytest.fail(f"daemon never said {text!r}: {''.join(self.log)}")
                self._changed.wait(min(remaining, 0.5))

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signals it and waits; (exit status, its whole log)."""
        self.process.send_signal(signum)
        return self.exited()

    def exited(self) -> tuple[int, str]:
        status = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return status, "".join(self.log)


def _lazybuild(*args: str) -> list[str]:
    return [sys.executable, "-m", "lazybuild", *args]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory anyone may traverse (as /run/lazybuild is), so that only the socket's
    own mode decides who may connect."""
    path = Path(tempfile.mkdtemp(prefix="lazybuild-daemon-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    started: list[Daemon] = []

    def start(
        *serve_args: str,
        state_dir: Path | None = None,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        state = state_dir or tmp_path / "state"
        process = subprocess.Popen(
            _lazybuild("--state-dir", str(state), "serve", *serve_args),
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        daemon = Daemon(process, state)
        started.append(daemon)
        if ready:
            daemon.wait_for("serving on")
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def _stub(channel: grpc.Channel) -> ControlStub:
    return ControlStub(channel)


def test_info_disk_usage_and_prune_over_the_unix_socket(
    start_daemon: StartDaemon, socket_dir: Path
) -> None:
    sock = socket_dir / "lazybuild.sock"
    daemon: Daemon = start_daemon("--addr", f"unix://{sock}")
    # Something for du to count and prune to free.
    (daemon.state_dir / "tocs" / "sha256").mkdir(parents=True)
    (daemon.state_dir / "tocs" / "sha256" / "toc").write_bytes(b"x" * 10000)

    with grpc.insecure_channel(f"unix:{sock}") as channel:
        info = _stub(channel).Info(control_pb2.InfoRequest(), timeout=30)
        assert info.state_dir == str(daemon.state_dir)
        assert list(info.addresses) == [f"unix://{sock}"]
        assert info.pid == daemon.process.pid
        assert info.builds_running == 0
        assert info.version

        usage = _stub(channel).DiskUsage(control_pb2.DiskUsageRequest(), timeout=60)
        tocs = next(e for e in usage.entries if e.label == "layer TOCs")
        assert (tocs.count, tocs.unit) == (2, "files")

    # The CLI through the daemon prints what it prints locally, line for line.
    local_du = subprocess.run(
        _lazybuild("--state-dir", str(daemon.state_dir), "du"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    remote_du = subprocess.run(
        _lazybuild("du", "--builder", f"unix://{sock}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert remote_du.stdout == local_du.stdout
    assert "layer TOCs              2 files" in remote_du.stdout

    remote_prune = subprocess.run(
        _lazybuild("prune"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LAZYBUILD_HOST": f"unix://{sock}"},
    )
    assert "freed 2 layer TOCs" in remote_prune.stdout
    assert not (daemon.state_dir / "tocs").exists()

    status, log = daemon.stop()
    assert status == 0, log


def test_the_socket_is_root_s_0660_and_refuses_others(
    start_daemon: StartDaemon, socket_dir: Path
) -> None:
    sock = socket_dir / "lazybuild.sock"
    daemon: Daemon = start_daemon("--addr", f"unix://{sock}")
    info = sock.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (0, 0)

    refused = subprocess.run(
        [*NOBODY, *_lazybuild("du", "--builder", f"unix://{sock}")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"lazybuild: error: cannot reach the builder at unix://{sock}")
    assert "Traceback" not in refused.stderr
    daemon.stop()

    # The same client in the socket's group is let in: the mode is what refused it.
    daemon = start_daemon("--addr", f"unix://{sock}", "--socket-group", "65534")
    assert sock.stat().st_gid == 65534
    allowed = subprocess.run(
        [*NOBODY, *_lazybuild("du", "--builder", f"unix://{sock}")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith(f"state directory  {daemon.state_dir}\n")


def test_sigterm_stops_cleanly_and_leaves_no_socket(
    start_daemon: StartDaemon, socket_dir: Path
) -> None:
    sock = socket_dir / "lazybuild.sock"
    daemon: Daemon = start_daemon("--addr", f"unix://{sock}")
    status, log = daemon.stop(signal.SIGTERM)
    assert status == 0, log
    assert "Traceback" not in log
    assert "stopped" in log
    assert not sock.exists()
    # The lock died with it: the same state directory serves again at once.
    start_daemon("--addr", f"unix://{sock}").stop(signal.SIGINT)
    assert not sock.exists()


def test_one_daemon_per_state_directory_and_per_socket(
    start_daemon: StartDaemon, socket_dir: Path
) -> None:
    sock = socket_dir / "lazybuild.sock"
    first: Daemon = start_daemon("--addr", f"unix://{sock}")
    second: Daemon = start_daemon("--addr", f"unix://{socket_dir / 'other.sock'}", ready=False)
    status, err = second.exited()
    assert status == 1
    assert err.splitlines() == [
        f"lazybuild: error: state directory {first.state_dir} is in use by another "
        f"lazybuild daemon (pid {first.process.pid})"
    ]
    third: Daemon = start_daemon(
        "--addr", f"unix://{sock}", state_dir=first.state_dir.parent / "state3", ready=False
    )
    status, err = third.exited()
    assert status == 1
    assert err.splitlines() == [
        f"lazybuild: error: unix://{sock}: another daemon is listening on {sock}"
    ]
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        assert _stub(channel).Info(control_pb2.InfoRequest(), timeout=30).pid == first.process.pid


def test_a_sigkilled_daemon_is_cleaned_up_after_on_restart(
    start_daemon: StartDaemon, socket_dir: Path
) -> None:
    sock = socket_dir / "lazybuild.sock"
    daemon: Daemon = start_daemon("--addr", f"unix://{sock}")
    daemon.stop(signal.SIGKILL)
    assert sock.exists()  # what a killed daemon leaves

    again: Daemon = start_daemon("--addr", f"unix://{sock}")
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        assert _stub(channel).Info(control_pb2.InfoRequest(), timeout=30).pid == again.process.pid
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    status, log = again.stop()
    assert status == 0, log


# -- mutual TLS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    ca_key, other_ca_key = _key(), _key()
    ca = _certificate("lazybuild test CA", ca_key, None, ca=True)
    other_ca = _certificate("another CA", other_ca_key, None, ca=True)
    issued = (ca.subject, ca_key)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    _write_pem(root / "ca.pem", ca, ca_key)
    _write_pem(
        root / "server.pem", _certificate("daemon", server_key, issued, server=True), server_key
    )
    _write_pem(root / "client.pem", _certificate("ci-runner", client_key, issued), client_key)
    _write_pem(
        root / "stranger.pem",
        _certificate("stranger", stranger_key, (other_ca.subject, other_ca_key)),
        stranger_key,
    )
    return Pki(
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
        root / "stranger.pem",
        root / "stranger.key",
    )


def _tls_info(port: int, pki: Pki, cert: Path | None, key: Path | None) -> control_pb2.InfoResponse:
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return _stub(channel).Info(control_pb2.InfoRequest(), timeout=30)


def test_tcp_needs_a_client_certificate_from_the_ca(
    start_daemon: StartDaemon, socket_dir: Path, pki: Pki
) -> None:
    daemon: Daemon = start_daemon(
        "--addr",
        f"unix://{socket_dir / 'lazybuild.sock'}",
        "--addr",
        "tcp://127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-ca",
        str(pki.ca),
    )
    line = daemon.wait_for("serving on tcp://")
    port = int(line.strip().rsplit(":", 1)[1])

    info = _tls_info(port, pki, pki.client_cert, pki.client_key)
    assert f"tcp://127.0.0.1:{port}" in info.addresses

    for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
        with pytest.raises(grpc.RpcError) as refused:
            _tls_info(port, pki, cert, key)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # The CLI's client, with its certificates where $LAZYBUILD_CERT_PATH says.
    cert_dir = pki.ca.parent / "client-dir"
    cert_dir.mkdir()
    (cert_dir / "ca.pem").write_bytes(pki.ca.read_bytes())
    (cert_dir / "cert.pem").write_bytes(pki.client_cert.read_bytes())
    (cert_dir / "key.pem").write_bytes(pki.client_key.read_bytes())
    du = subprocess.run(
        _lazybuild("du", "--builder", f"tcp://127.0.0.1:{port}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LAZYBUILD_CERT_PATH": str(cert_dir)},
    )
    assert du.returncode == 0, du.stderr
    assert du.stdout.startswith(f"state directory  {daemon.state_dir}\n")
    status, log = daemon.stop()
    assert status == 0, log


def test_tcp_without_tls_is_refused_by_the_config(start_daemon: StartDaemon) -> None:
    daemon: Daemon = start_daemon("--addr", "tcp://127.0.0.1:0", ready=False)
    status, err = daemon.exited()
    assert status == 1
    assert err.splitlines() == [
        "lazybuild: error: command line: tcp://127.0.0.1:0 needs tls.cert, tls.key and "
        "tls.ca: TCP is served with mutual TLS only"
    ]


def test_a_context_over_the_daemon_s_bound_is_refused_in_one_line(
    start_daemon: StartDaemon, socket_dir: Path, tmp_path: Path
) -> None:
    sock = socket_dir / "lazybuild.sock"
    config = tmp_path / "lazybuild.toml"
    config.write_text("max_context_size = 4096\n")
    daemon: Daemon = start_daemon("--config", str(config), "--addr", f"unix://{sock}")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY big /\n")
    (context / "big").write_bytes(b"x" * 100_000)
    done = subprocess.run(
        _lazybuild("build", "--builder", f"unix://{sock}", str(context)),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "lazybuild: error: the build context is larger than the daemon takes (4096 bytes; "
        "max_context_size in its configuration)"
    ]
    # Nothing of it stays in the daemon's state.
    assert not any((daemon.state_dir / "daemon-builds").glob("*"))
    status, log = daemon.stop()
    assert status == 0, log


def test_it_tells_systemd_when_it_is_ready_and_when_it_stops(
    start_daemon: StartDaemon, socket_dir: Path
) -> None:
    notify_path = socket_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        sock = socket_dir / "lazybuild.sock"
        daemon: Daemon = start_daemon(
            "--addr",
            f"unix://{sock}",
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        )
        assert notify.recv(256) == b"READY=1"
        assert sock.exists()  # ready means listening
        status, log = daemon.stop()
        assert status == 0, log
        assert notify.recv(256) == b"STOPPING=1"
