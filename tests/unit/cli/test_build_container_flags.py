"""``lazybuild build``'s --add-host, --shm-size, --ulimit, --allow and BUILDKIT_PROGRESS:
values as docker/buildx spell them, and one line with exit 1 for a bad one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lazybuild.cli import build_flags
from lazybuild.errors import UsageError
from lazybuild.executor.spec import ProcessSpec, Ulimit, generate_spec
from lazybuild.executor.users import ResolvedUser


def test_add_host_takes_docker_and_buildx_spellings() -> None:
    assert build_flags.extra_hosts(
        ["a.test:10.0.0.1", "b.test=::1", "c.test:[fe80::1]", "d.test=[::2]"]
    ) == (("a.test", "10.0.0.1"), ("b.test", "::1"), ("c.test", "fe80::1"), ("d.test", "::2"))


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("nohost", "expected HOST:IP"),
        (":10.0.0.1", "expected HOST:IP"),
        ("a.test:", "expected HOST:IP"),
        ("a.test:not-an-ip", "is not an IP address"),
        ("a.test:host-gateway", "host-gateway is not supported"),
    ],
)
def test_bad_add_host(value: str, said: str) -> None:
    with pytest.raises(UsageError, match=said):
        build_flags.extra_hosts([value])


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("67108864", 67108864),
        ("64m", 64 << 20),
        ("64M", 64 << 20),
        ("1g", 1 << 30),
        ("1GiB", 1 << 30),
        ("512kb", 512 << 10),
        ("1.5g", 3 << 29),
        ("0", None),
        (None, None),
    ],
)
def test_shm_size_units_as_docker(value: str | None, size: int | None) -> None:
    assert build_flags.shm_size(value) == size


@pytest.mark.parametrize("value", ["", "big", "-1", "64x", "1..5g"])
def test_bad_shm_size(value: str) -> None:
    with pytest.raises(UsageError, match="--shm-size"):
        build_flags.shm_size(value)


def test_ulimit_soft_hard_and_unlimited() -> None:
    assert build_flags.ulimits(["nofile=1024:2048", "core=0", "stack=-1", "nofile=10:20"]) == (
        Ulimit("nofile", 10, 20),
        Ulimit("core", 0, 0),
        Ulimit("stack", -1, -1),
    )


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("nofile", "expected TYPE=SOFT"),
        ("files=10", "invalid ulimit type"),
        ("nofile=ten", "must be integers"),
        ("nofile=2048:1024", "soft limit must be less than or equal to the hard limit"),
        ("nofile=-1:1024", "soft limit must be"),
        ("nofile=-2", "-1 \\(unlimited\\) or more"),
    ],
)
def test_bad_ulimit(value: str, said: str) -> None:
    with pytest.raises(UsageError, match=said):
        build_flags.ulimits([value])


def test_allow_entitlements() -> None:
    assert build_flags.entitlements(["network.host", "security.insecure,network.host"]) == (
        "network.host",
        "security.insecure",
    )
    with pytest.raises(UsageError, match="invalid entitlement"):
        build_flags.entitlements(["device"])


def test_buildkit_progress_is_the_default_of_progress() -> None:
    """buildx: "--progress ... (default auto)", its default taken from BUILDKIT_PROGRESS."""
    assert build_flags.progress_mode(None, {}) == "auto"
    assert build_flags.progress_mode(None, {"BUILDKIT_PROGRESS": "plain"}) == "plain"
    assert build_flags.progress_mode("quiet", {"BUILDKIT_PROGRESS": "plain"}) == "quiet"
    with pytest.raises(UsageError, match="BUILDKIT_PROGRESS='fancy'"):
        build_flags.progress_mode(None, {"BUILDKIT_PROGRESS": "fancy"})


APP = ResolvedUser(0, 0, (), "/root", "root")


def test_spec_shm_size_and_ulimits() -> None:
    spec = generate_spec(
        rootfs=Path("/run/rootfs"),
        process=ProcessSpec(["true"], [], "/", APP),
        hostname="box",
        network="none",
        shm_size=128 << 20,
        ulimits=(Ulimit("nofile", 1000, 2000), Ulimit("core", -1, -1)),
    )
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert [o for o in shm["options"] if o.startswith("size=")] == [f"size={128 << 20}"]
    # Docker's nofile default gives way to the flag's; -1 is RLIM_INFINITY.
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
        {"type": "RLIMIT_CORE", "soft": (1 << 64) - 1, "hard": (1 << 64) - 1},
    ]


@pytest.mark.parametrize(
    ("flags", "env", "said"),
    [
        (["--ulimit", "nofile=2:1"], {}, "--ulimit 'nofile=2:1': the soft limit"),
        (["--add-host", "x"], {}, "--add-host 'x': expected HOST:IP"),
        ([], {"BUILDKIT_PROGRESS": "fancy"}, "BUILDKIT_PROGRESS='fancy'"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_1(
    flags: list[str], env: dict[str, str], said: str, tmp_path: Path
) -> None:
    """Checked before the build forks its filesystem process or imports its machinery."""
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "lazybuild", "--state-dir", str(tmp_path / "state")),
            *("build", *flags, str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert completed.stderr.startswith("lazybuild: error: ")
    assert said in completed.stderr
    assert completed.stderr.count("\n") == 1, completed.stderr


def test_annotation_levels_as_buildx() -> None:
    """buildx: no type prefix annotates the image manifest, as ``manifest:`` does."""
    assert build_flags.manifest_annotations(
        ["org.opencontainers.image.title=app", "manifest:a.b=c=d", "empty="]
    ) == {"org.opencontainers.image.title": "app", "a.b": "c=d", "empty": ""}
    for refused in ("index:a=b", "manifest-descriptor:a=b", "manifest[linux/amd64]:a=b"):
        with pytest.raises(UsageError, match="only manifest annotations are supported"):
            build_flags.manifest_annotations([refused])
    for malformed in ("novalue", "=x", "manifest:=x"):
        with pytest.raises(UsageError, match="expected \\[TYPE:\\]KEY=VALUE"):
            build_flags.manifest_annotations([malformed])


def test_annotations_change_the_manifest_not_the_image_id() -> None:
    from lazybuild.exporter.image import ExportedLayer, assemble_image
    from lazybuild.oci.descriptor import Descriptor
    from lazybuild.oci.platform import Platform

    layer = ExportedLayer(
        Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 1),
        "sha256:" + "b" * 64,
    )

    def assembled(annotations: dict[str, str]) -> tuple[str, dict[str, object], str]:
        image = assemble_image(
            {"config": {}},
            [layer],
            base_layer_count=0,
            platform=Platform("linux", "amd64"),
            source_date_epoch=0,
            annotations=annotations,
        )
        manifest = json.loads(image.manifest_bytes)
        return image.image_id, manifest, image.manifest_descriptor.digest

    plain_id, plain, plain_digest = assembled({})
    annotated_id, annotated, annotated_digest = assembled({"a.b": "c"})
    assert "annotations" not in plain
    assert annotated["annotations"] == {"a.b": "c"}
    assert annotated_id == plain_id and annotated_digest != plain_digest


def test_container_flags_salt_run_keys_only_when_given() -> None:
    """BuildKit's exec op holds extra hosts, ulimits and the /dev/shm mount, so they key
    RUN steps; without them a step keeps the key it had before these flags existed."""
    from types import SimpleNamespace
    from typing import Any, cast

    from lazybuild.worker.execop import _container_salt

    def salt(**given: Any) -> str:
        fields = {"extra_hosts": (), "shm_size": None, "ulimits": (), **given}
        return _container_salt(cast(Any, SimpleNamespace(**fields)))

    assert salt() == ""
    salts = {
        salt(extra_hosts=(("a", "10.0.0.1"),)),
        salt(extra_hosts=(("a", "10.0.0.2"),)),
        salt(shm_size=1 << 27),
        salt(ulimits=(Ulimit("nofile", 1, 2),)),
        salt(ulimits=(Ulimit("nofile", 1, 3),)),
    }
    assert len(salts) == 5 and "" not in salts
