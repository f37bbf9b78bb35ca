"""What a build through the daemon sends: every field of ``BuildRequest`` travels in the
header, and the context tar is what ``.dockerignore`` leaves, mtimes to the nanosecond."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from lazybuild.api.control.v1 import control_pb2
from lazybuild.cli.main import build_parser
from lazybuild.daemon.buildclient import build_header, write_context_tar
from lazybuild.errors import UsageError
from lazybuild.imagebuild.request import BuildRequest

# BuildRequest's fields and the header fields that carry them. A field added to the
# request fails this test until the daemon's header (and buildjob.py) carry it too.
CARRIED_BY = {
    "context_dir": "(the context tar)",
    "dockerfile": "dockerfile",
    "build_args": "build_args",
    "target": "target",
    "platform": "platform",
    "no_cache": "no_cache",
    "pull": "pull",
    "secrets": "secrets",
    "labels": "labels",
    "source_date_epoch": "source_date_epoch",
    "network": "network",
    "cache_from": "cache_from",
    "export_cache": "cache_to",
    "extra_hosts": "extra_hosts",
    "shm_size": "shm_size",
    "ulimits": "ulimits",
    "no_cache_filter": "no_cache_filter",
    "named_contexts": "named_contexts",  # local ones' content as NamedContextChunks
    "ssh": "ssh_ids",  # the agents stay with the client, relayed over ForwardSsh
}


def test_every_build_request_field_travels_in_the_header() -> None:
    request_fields = {f.name for f in dataclasses.fields(BuildRequest)}
    assert request_fields == set(CARRIED_BY)
    header_fields = set(control_pb2.BuildHeader.DESCRIPTOR.fields_by_name)
    missing = {v for v in CARRIED_BY.values() if not v.startswith("(")} - header_fields
    assert not missing


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    (context / "src").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (context / ".dockerignore").write_text("*.log\nsecret/\n")
    (context / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (context / "build.log").write_text("ignored\n")
    (context / "secret").mkdir()
    (context / "secret" / "key").write_text("ignored too\n")
    os.symlink("src/main.c", context / "link")
    os.utime(context / "src" / "main.c", ns=(1_600_000_000_123_456_789,) * 2)
    (context / "src" / "main.c").chmod(0o751)
    return context


def test_the_context_tar_honours_dockerignore_and_keeps_mtimes(tmp_path: Path) -> None:
    context = _context(tmp_path)
    out = io.BytesIO()
    write_context_tar(context, context / "Dockerfile", out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [".dockerignore", "Dockerfile", "link", "src", "src/main.c"]
    main_c = members["src/main.c"]
    assert main_c.pax_headers["mtime"] == "1600000000.123456789"
    assert main_c.mode == 0o751
    assert (main_c.uid, main_c.gid) == (0, 0)
    assert members["link"].issym() and members["link"].linkname == "src/main.c"


def test_the_header_carries_the_flags_as_read_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = _context(tmp_path)
    secret = tmp_path / "token"
    secret.write_bytes(b"s3cret")
    monkeypatch.setenv("FROM_ENV", "env-value")
    args = build_parser().parse_args(
        [
            "build",
            "--builder",
            "unix:///run/x.sock",
            "--build-arg",
            "A=1",
            "--build-arg",
            "FROM_ENV",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "--secret",
            f"id=token,src={secret}",
            "--label",
            "team=ci",
            "--target",
            "final",
            "--no-cache",
            "--network",
            "none",
            "-t",
            "registry.example/app:1",
            "--push",
            "-o",
            "type=oci,dest=out.tar",
            "--no-optimize",
            str(context),
        ]
    )
    header, context_dir, outputs = build_header(args)
    assert context_dir == context
    assert header.dockerfile_name == "Dockerfile"
    assert header.dockerfile == (context / "Dockerfile").read_bytes()
    assert header.dockerignore == b"*.log\nsecret/\n"
    assert dict(header.build_args) == {
        "A": "1",
        "FROM_ENV": "env-value",
        "SOURCE_DATE_EPOCH": "1700000000",
    }
    assert header.source_date_epoch == 1700000000
    assert dict(header.secrets) == {"token": b"s3cret"}
    assert dict(header.labels) == {"team": "ci"}
    assert (header.target, header.no_cache, header.network) == ("final", True, "none")
    assert [o.WhichOneof("kind") for o in header.outputs] == ["oci", "image"]
    assert list(header.outputs[1].image.names) == ["registry.example/app:1"]
    assert header.outputs[1].image.push
    assert not header.profiling.enabled
    assert len(outputs) == 2
    assert len(header.build_id) == 32


def test_what_a_builder_cannot_do_yet_is_one_line(tmp_path: Path) -> None:
    context = _context(tmp_path)
    for flags, expected in (
        (["-o", "type=oci,tar=false"], "an OCI layout directory cannot go to standard output"),
        (["--cache-to", "type=local"], "type=local needs dest=DIR"),
        (["--ssh", "x=/nonexistent"], "--ssh x: /nonexistent: No such file"),
    ):
        args = build_parser().parse_args(
            ["build", "--builder", "unix:///run/x.sock", *flags, str(context)]
        )
        with pytest.raises(UsageError, match=expected):
            build_header(args)


def test_directory_outputs_come_back_as_directories(tmp_path: Path) -> None:
    context = _context(tmp_path)
    args = build_parser().parse_args(
        [
            "build",
            "--builder",
            "unix:///run/x.sock",
            "-o",
            str(tmp_path / "rootfs"),
            "-o",
            f"type=oci,tar=false,dest={tmp_path / 'layout'}",
            str(context),
        ]
    )
    header, _, _ = build_header(args)
    assert [o.WhichOneof("kind") for o in header.outputs] == ["local", "oci"]
    assert header.outputs[1].oci.directory


def test_load_asks_for_a_docker_tarball_to_load_here(tmp_path: Path) -> None:
    context = _context(tmp_path)
    args = build_parser().parse_args(
        ["build", "--builder", "unix:///run/x.sock", "--load", "-t", "app:1", str(context)]
    )
    header, _, _ = build_header(args)
    [output] = header.outputs
    assert output.WhichOneof("kind") == "docker"
    assert output.docker.load and not output.docker.dest
    assert list(output.docker.names) == ["app:1"]


def test_local_caches_travel_by_their_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = _context(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        [
            "build",
            "--builder",
            "unix:///run/x.sock",
            "--cache-from",
            "type=local,src=ci-cache",
            "--cache-from",
            "registry.example/cache:main",
            "--cache-to",
            'type=local,dest=out,mode=max,"cache-mounts=a,b"',
            str(context),
        ]
    )
    header, _, _ = build_header(args)
    assert list(header.cache_from) == [
        f"type=local,src={tmp_path / 'ci-cache'}",
        "registry.example/cache:main",
    ]
    out = tmp_path / "out"
    assert list(header.cache_to) == [f'type=local,dest={out},mode=max,"cache-mounts=a,b"']


def test_an_oci_layout_context_names_no_client_path(tmp_path: Path) -> None:
    from lazybuild.context.sources import parse_oci_layout
    from lazybuild.daemon.buildclient import write_layout_tar

    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(data: bytes) -> str:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return "sha256:" + digest

    config = blob(b"{}")
    layer = blob(b"layer")
    other = blob(b"another image's blob")
    manifest = blob(
        (
            '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", '
            f'"config": {{"digest": "{config}", "size": 2}}, '
            f'"layers": [{{"digest": "{layer}", "size": 5}}]}}'
        ).encode()
    )
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest,
        "size": 1,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    context = _context(tmp_path)
    args = build_parser().parse_args(
        [
            "build",
            "--builder",
            "unix:///run/x.sock",
            "--build-context",
            f"base=oci-layout://{layout}:v1",
            str(context),
        ]
    )
    header, _, _ = build_header(args)
    assert dict(header.named_contexts) == {"base": "oci-layout://:v1"}
    sent = io.BytesIO()
    write_layout_tar(parse_oci_layout(f"oci-layout://{layout}:v1"), sent)
    with tarfile.open(fileobj=io.BytesIO(sent.getvalue())) as tar:
        names = set(tar.getnames())
    assert names == {
        "blobs",
        "blobs/sha256",
        "oci-layout",
        "index.json",
        *(f"blobs/sha256/{d.removeprefix('sha256:')}" for d in (manifest, config, layer)),
    }
    assert f"blobs/sha256/{other.removeprefix('sha256:')}" not in names


def test_ssh_agents_travel_as_ids_only(tmp_path: Path) -> None:
    key = tmp_path / "deploy_key"
    key.write_text("a key\n")
    args = build_parser().parse_args(
        [
            "build",
            "--builder",
            "unix:///run/x.sock",
            "--ssh",
            f"deploy={key}",
            str(_context(tmp_path)),
        ]
    )
    header, _, _ = build_header(args)
    assert list(header.ssh_ids) == ["deploy"]
    assert str(key).encode() not in header.SerializeToString()
