"""A small Docker token-auth server (the "realm" of a registry with `auth: token`).

It checks HTTP Basic credentials against one fixed user and issues RS256 JWTs with the
`access` claims Distribution 2.8 checks. Distribution finds the verification key by the
JWT `kid`, which must be the libtrust key id of a certificate in its rootcertbundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ALL_ACTIONS = ("pull", "push", "delete", "*")


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """libtrust's key id: base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo),
    cut into 12 groups of 4 characters joined by ':'."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(der).digest()[:30]
    encoded = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def parse_scope(scope: str) -> dict[str, object] | None:
    """'repository:name/with:port?:pull,push' -> access entry; the name may contain ':'."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


@dataclass
class IssuedToken:
    username: str | None
    scopes: list[str]
    method: str


@dataclass
class TokenServer:
    """Threaded HTTP token server on 127.0.0.1; start() then use `.realm`."""

    workdir: Path
    service: str = "lazybuild-test-registry"
    issuer: str = "lazybuild-test-token-server"
    username: str = "lazybuild"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    expires_in: int = 300
    # Actions granted without credentials; empty means anonymous requests get 401.
    anonymous_actions: tuple[str, ...] = ()
    issued: list[IssuedToken] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = libtrust_key_id(self._key.public_key())
        self.cert_path = self.workdir / "token-signer.pem"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def realm(self) -> str:
        assert self._server is not None, "token server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/token"

    def write_certificate(self) -> Path:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self.cert_path

    def issue(self, username: str | None, scopes: list[str], method: str = "GET") -> str:
        granted = ALL_ACTIONS if username is not None else self.anonymous_actions
        access = []
        for scope in scopes:
            entry = parse_scope(scope)
            if entry is None:
                continue
            actions = entry["actions"]
            assert isinstance(actions, list)
            entry["actions"] = [a for a in actions if a in granted]
            access.append(entry)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": username or "",
            "aud": self.service,
            "iat": now,
            # Allow for clock differences the same way real token servers do.
            "nbf": now - 10,
            "exp": now + self.expires_in,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        with self._lock:
            self.issued.append(IssuedToken(username, list(scopes), method))
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})

    def check_basic(self, header: str | None) -> str | None:
        """The username if `header` holds the right Basic credentials, else None."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if (user, password) == (self.username, self.password) else None

    def start(self) -> TokenServer:
        self.write_certificate()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _make_handler(tokens: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            return

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="lazybuild-test"')
            self.end_headers()
            self.wfile.write(data)

        def _grant(self, username: str | None, scopes: list[str], *, oauth: bool) -> None:
            if username is None and not tokens.anonymous_actions:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            token = tokens.issue(username, scopes, "POST" if oauth else "GET")
            issued_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body: dict[str, object] = {
                "access_token": token,
                "expires_in": tokens.expires_in,
                "issued_at": issued_at,
            }
            if not oauth:
                body["token"] = token
            self._reply(200, body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            query = parse_qs(url.query)
            username = tokens.check_basic(self.headers.get("Authorization"))
            self._grant(username, query.get("scope", []), oauth=False)

        def do_POST(self) -> None:
            # OAuth2 password grant, which containerd tries first when it has credentials.
            if urlsplit(self.path).path != "/token":
                self._reply(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            username: str | None = None
            if form.get("grant_type") == ["password"]:
                user = form.get("username", [""])[0]
                password = form.get("password", [""])[0]
                if (user, password) == (tokens.username, tokens.password):
                    username = user
            scopes = [s for value in form.get("scope", []) for s in value.split(" ") if s]
            self._grant(username, scopes, oauth=True)

    return Handler
