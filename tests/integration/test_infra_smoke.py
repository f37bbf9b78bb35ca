"""The test fixtures themselves work: real daemons come up and behave like the real thing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest

from lazybuild.oci.layout import OciLayout
from tests.support import procs
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.imagebuild import push_oci_layout, whiteout_layer_dir, write_layer
from tests.support.registry import Registry, TokenRegistry, write_docker_config
from tests.support.wanproxy import WanProxy

pytestmark = pytest.mark.root


def _upload_blob(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = httpx.URL(base).join(start.headers["Location"])
    # The Location carries upload state in its query; the digest must be added to it.
    put = client.put(location.copy_merge_params({"digest": digest}), content=data)
    assert put.status_code == 201, put.text
    return digest


def test_registry_serves_blobs_with_ranges(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    data = bytes(range(256)) * 40
    with httpx.Client(timeout=10) as client:
        digest = _upload_blob(client, registry.url, "smoke/ranges", data)
        blob_url = f"{registry.url}/v2/smoke/ranges/blobs/{digest}"
        whole = client.get(blob_url)
        assert whole.status_code == 200 and whole.content == data
        part = client.get(blob_url, headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206, part.headers
        assert part.content == data[100:1100]
        assert client.delete(blob_url).status_code == 202  # deletes are enabled
    assert (registry.root / "docker").is_dir()  # storage lives in the fixture's dir


def test_token_registry_challenges_then_accepts_token(token_registry: TokenRegistry) -> None:
    with httpx.Client(timeout=10) as client:
        anonymous = client.get(f"{token_registry.url}/v2/")
        assert anonymous.status_code == 401
        challenge = anonymous.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        params = dict(part.split("=", 1) for part in challenge[len("Bearer ") :].split(","))
        realm = params["realm"].strip('"')
        service = params["service"].strip('"')

        assert client.get(realm, params={"service": service}).status_code == 401
        scope = "repository:smoke/auth:pull,push"
        response = client.get(
            realm,
            params={"service": service, "scope": scope},
            auth=(token_registry.username, token_registry.password),
        )
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["access"] == [
            {"type": "repository", "name": "smoke/auth", "actions": ["pull", "push"]}
        ]

        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get(f"{token_registry.url}/v2/", headers=bearer).status_code == 200
        client.headers.update(bearer)
        digest = _upload_blob(client, token_registry.url, "smoke/auth", b"hello")
        blob = client.get(f"{token_registry.url}/v2/smoke/auth/blobs/{digest}")
        assert blob.content == b"hello"
        # The token is scoped: another repository is refused.
        other = client.get(f"{token_registry.url}/v2/smoke/other/tags/list")
        assert other.status_code == 401


def test_token_server_oauth_post(token_registry: TokenRegistry) -> None:
    realm = token_registry.token_server.realm
    form = {
        "grant_type": "password",
        "username": token_registry.username,
        "password": token_registry.password,
        "service": token_registry.token_server.service,
        "scope": "repository:smoke/auth:pull",
        "client_id": "smoke",
    }
    response = httpx.post(realm, data=form, timeout=10)
    assert response.status_code == 200, response.text
    assert "access_token" in response.json()
    form["password"] = "wrong"
    assert httpx.post(realm, data=form, timeout=10).status_code == 401


def test_write_docker_config(tmp_path: Path) -> None:
    path = write_docker_config(tmp_path / "config.json", "127.0.0.1:5000", "u", "p:w")
    auths = json.loads(path.read_text())["auths"]
    assert base64.b64decode(auths["127.0.0.1:5000"]["auth"]) == b"u:p:w"


def test_debian_image_layout_is_docker_style(debian_image_layout: Path) -> None:
    index = json.loads((debian_image_layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((debian_image_layout / "blobs/sha256" / manifest_digest).read_text())
    assert len(manifest["layers"]) == 3
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    first = debian_image_layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    with tarfile.open(first, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin"].issym()  # usrmerge symlink kept as a symlink
    assert members["dev/null"].ischr()
    assert all(m.uname == "" and not m.name.startswith("./") for m in members.values())
    names = list(members)
    assert "usr/share/doc" not in names  # split into its own layer


def test_containerd_converts_and_runs(
    containerd: Containerd, tiny_image: str, registry: Registry
) -> None:
    """ctr-remote converts a pushed image to eStargz, and ctr runs it honouring whiteouts."""
    converted = f"{registry.host}/test/tiny:estargz"
    containerd.convert_to_estargz(tiny_image, converted)
    manifest = httpx.get(
        f"{registry.url}/v2/test/tiny/manifests/estargz",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    ).json()
    annotations = [layer.get("annotations", {}) for layer in manifest["layers"]]
    assert len(annotations) == 3
    assert all("containerd.io/snapshot/stargz/toc.digest" in a for a in annotations)
    assert containerd.run_image(converted, "/bin/echo", "hi") == "hi\n"
    shown = containerd.run_image(converted, "/bin/cat", "/hello.txt", "/opt/data/new.txt")
    assert shown == "hello from the upper layer\nnew\n"
    for hidden in ("/etc/motd", "/opt/data/old.txt"):
        with pytest.raises(subprocess.CalledProcessError):
            containerd.run_image(converted, "/bin/cat", hidden, pull=False)


def test_containerd_runs_debootstrap_image(containerd: Containerd, debian_image: str) -> None:
    """The full minbase image (plain gzip, 3 layers) runs as pushed."""
    assert containerd.run_image(debian_image, "/bin/sh", "-c", "echo hi") == "hi\n"


def test_dockerd_pulls_and_runs(dockerd: Dockerd, tiny_image: str) -> None:
    """dockerd pulls the OCI image over plain HTTP from loopback and applies whiteouts."""
    dockerd.docker("pull", tiny_image)
    ran = dockerd.docker("run", "--rm", "--network", "none", tiny_image, "/bin/echo", "hi")
    assert ran.stdout == "hi\n"
    default_cmd = dockerd.docker("run", "--rm", "--network", "none", tiny_image)
    assert default_cmd.stdout == "hello from the upper layer\n"
    hidden = dockerd.docker(
        "run", "--rm", "--network", "none", tiny_image, "/bin/cat", "/opt/data/old.txt",
        check=False,
    )  # fmt: skip
    assert hidden.returncode != 0


def test_dockerd_logs_in_to_token_registry(
    dockerd: Dockerd, token_registry: TokenRegistry, tiny_image_layout: Path
) -> None:
    """docker login + pull work against the token-auth registry (a real client's token dance)."""
    push_oci_layout(
        tiny_image_layout,
        token_registry.host,
        "test/private",
        "v1",
        username=token_registry.username,
        password=token_registry.password,
    )
    ref = f"{token_registry.host}/test/private:v1"
    assert dockerd.docker("pull", ref, check=False).returncode != 0
    write_docker_config(
        dockerd.config_dir, token_registry.host, token_registry.username, token_registry.password
    )
    dockerd.docker("pull", ref)


def test_wan_proxy_delays_limits_and_counts(
    registry: Registry, wan_proxy: Callable[..., WanProxy], tmp_path: Path
) -> None:
    """Sanity only (no tight timing bounds): latency and bandwidth are felt, bytes counted."""
    data = os.urandom(10 * 1024 * 1024)
    with httpx.Client(timeout=60) as client:
        digest = _upload_blob(client, registry.url, "smoke/wan", data)
    slow = wan_proxy(registry.host)  # 20 ms each way, 100 Mbit/s
    plain = wan_proxy(registry.host, latency=0.0, bandwidth_bits=None)
    path = f"/v2/smoke/wan/blobs/{digest}"
    with httpx.Client(timeout=60) as client:
        client.get(f"http://{slow.host}/v2/")  # connection set up outside the timings
        started = time.monotonic()
        client.get(f"http://{slow.host}/v2/")
        round_trip = time.monotonic() - started
        started = time.monotonic()
        body = client.get(f"http://{slow.host}{path}").content
        transfer = time.monotonic() - started
    assert body == data
    assert round_trip >= 0.040  # one request and its answer each cross the 20 ms link
    assert transfer >= 0.7  # 10 MiB at 100 Mbit/s needs at least 0.84 s
    assert slow.bytes_to_client > len(data) and slow.connection_count == 1
    assert slow.connections[0].bytes_to_client == slow.bytes_to_client

    assert httpx.get(f"http://{plain.host}{path}", timeout=60).content == data
    assert len(data) < plain.bytes_to_client < len(data) + 4096
    plain.reset_counters()
    assert plain.bytes_to_client == 0


def test_daemon_that_fails_reports_its_log(tmp_path: Path) -> None:
    """A fixture daemon that cannot start fails with one message carrying its log tail."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Registry(tmp_path)
        server.port = taken.getsockname()[1]
        server.host = f"127.0.0.1:{server.port}"
        server.url = f"http://{server.host}"
        with pytest.raises(procs.DaemonError, match="address already in use"):
            server.start(timeout=10)


def test_python_rootfs_has_python(python_rootfs: Path, debian_rootfs: Path) -> None:
    assert (python_rootfs / "usr/bin/python3").exists()
    assert not (debian_rootfs / "usr/bin/python3").exists()
    assert not list((debian_rootfs / "var/cache/apt/archives").glob("*.deb"))  # shrunk


def test_whiteout_layer_entries(tmp_path: Path) -> None:
    """The upper-layer helper yields docker-style whiteout and opaque-marker entries."""
    upper = whiteout_layer_dir(
        tmp_path / "upper",
        delete=["etc/motd", "usr/share/doc/gone"],
        opaque={"opt/data": {"new.txt": b"new\n"}},
        add={"hello.txt": b"hi\n"},
    )
    layout = OciLayout.create(tmp_path / "layout")
    layer = write_layer(layout, upper)
    with tarfile.open(layout.blob_path(layer.digest), "r:gz") as tar:
        names = tar.getnames()
    assert names == [
        "etc",
        "etc/.wh.motd",
        "hello.txt",
        "opt",
        "opt/data",
        "opt/data/.wh..wh..opq",
        "opt/data/new.txt",
        "usr",
        "usr/share",
        "usr/share/doc",
        "usr/share/doc/.wh.gone",
    ]
    assert write_layer(layout, upper).digest == layer.digest  # deterministic


def test_layer_keeps_owners_xattrs_hardlinks_devices(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    tool = tree / "bin/tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, 1234, 5678)
    os.setxattr(tool, "user.lazybuild", b"\x00\xffbinary")
    os.link(tool, tree / "bin/tool-link")
    (tree / "dev").mkdir()
    os.mknod(tree / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    layout = OciLayout.create(tmp_path / "layout")
    layer = write_layer(layout, tree)
    with tarfile.open(layout.blob_path(layer.digest), "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert (members["bin/tool"].uid, members["bin/tool"].gid) == (1234, 5678)
    assert members["bin/tool"].uname == ""
    xattr = members["bin/tool"].pax_headers["SCHILY.xattr.user.lazybuild"]
    assert xattr.encode("utf-8", "surrogateescape") == b"\x00\xffbinary"
    assert members["bin/tool-link"].islnk() and members["bin/tool-link"].linkname == "bin/tool"
    null = members["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)


def test_push_through_wan_registry(wan_registry: WanProxy, tiny_image_layout: Path) -> None:
    """Uploads work through the proxy (the registry's Location headers follow the Host
    the client used) and the proxy counts what crossed it."""
    wan_registry.reset_counters()
    push_oci_layout(tiny_image_layout, wan_registry.host, "smoke/via-wan", "v1")
    layout = OciLayout.open(tiny_image_layout)
    manifest = json.loads(layout.read_blob(layout.resolve(None).digest))
    layer_bytes = sum(layer["size"] for layer in manifest["layers"])
    assert wan_registry.bytes_to_upstream > layer_bytes
    assert wan_registry.connection_count >= 1
