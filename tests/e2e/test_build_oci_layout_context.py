"""``--build-context NAME=oci-layout://DIR[:TAG][@sha256:...]`` as buildx takes it: an
OCI layout directory's image as ``FROM NAME`` and ``COPY --from=NAME``, its layers
mounted lazily from the layout's blobs, manifest and config checked by digest. The
layouts are written by lazybuild itself (``convert ... oci:DIR``, ``-o type=oci``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.imagebuild import cached_rootfs_image

DOCKERFILE = """\
FROM base AS built
RUN python3 -c "print('ran on the layout image')" > /ran.txt

FROM scratch
COPY --from=base /etc/debian_version /debian_version
COPY --from=built /ran.txt /ran.txt
"""


@pytest.fixture(scope="module")
def esgz_layout(python_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python image converted by lazybuild into a layout, tagged ``py``."""
    layout = tmp_path_factory.mktemp("layout") / "python-esgz"
    source = cached_rootfs_image(python_rootfs)
    assert main(["-q", "convert", f"oci:{source}", f"oci:{layout}:py"]) == 0
    return layout


def _manifest_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return str(entry["digest"])


def test_from_and_copy_from_an_oci_layout_context(esgz_layout: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", DOCKERFILE)
    digest = _manifest_digest(esgz_layout, "py")
    for value in (f"oci-layout://{esgz_layout}:py", f"oci-layout://{esgz_layout}@{digest}"):
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        lazybuild(
            state,
            "build",
            "--progress=plain",
            "--build-context",
            f"base={value}",
            "-o",
            f"type=local,dest={out}",
            str(context),
        )
        assert (out / "ran.txt").read_text() == "ran on the layout image\n"
        assert (out / "debian_version").read_text().startswith("12")
    assert_nothing_left(state)


def test_a_layout_written_by_a_build_is_a_base_for_the_next(
    esgz_layout: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = write_context(tmp_path / "first", "FROM base\nRUN echo first > /first.txt\n")
    built = tmp_path / "built"
    lazybuild(
        state,
        "build",
        "--build-context",
        f"base=oci-layout://{esgz_layout}:py",
        "-t",
        "example.invalid/first:1",
        "-o",
        f"type=oci,dest={built},tar=false",
        str(first),
    )
    second = write_context(tmp_path / "second", "FROM first\nRUN cat /first.txt > /second.txt\n")
    out = tmp_path / "out"
    lazybuild(
        state,
        "build",
        "--build-context",
        f"first=oci-layout://{built}",
        "-o",
        f"type=local,dest={out}",
        str(second),
    )
    assert (out / "second.txt").read_text() == "first\n"
    assert_nothing_left(state)


def test_what_cannot_be_a_base_is_one_line(
    esgz_layout: Path, python_rootfs: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", "FROM base\nRUN true\n")
    tampered = tmp_path / "tampered"
    shutil.copytree(esgz_layout, tampered)
    manifest = json.loads(
        (tampered / "blobs" / "sha256" / _manifest_digest(tampered, "py").split(":")[1]).read_text()
    )
    config = tampered / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    config.write_bytes(config.read_bytes().replace(b'"Env"', b'"Enx"'))
    cases = {
        f"oci-layout://{cached_rootfs_image(python_rootfs)}": "is not eStargz with a TOC digest",
        f"oci-layout://{esgz_layout}:nope": "no image tagged 'nope'",
        f"oci-layout://{tampered}:py": f"{tampered}: blob sha256:",
        f"oci-layout://{tmp_path}": "is not an OCI layout directory",
    }
    for value, message in cases.items():
        result = lazybuild(
            state, "build", "--build-context", f"base={value}", str(context), check=False
        )
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if message in line]
        if not lines:
            pytest.fail(f"{value}: {result.stderr}")
    assert_nothing_left(state)


def test_through_the_daemon_the_layout_travels_as_its_blobs(
    esgz_layout: Path, tmp_path: Path
) -> None:
    """The daemon never opens the client's directory: the client sends the blobs the
    image needs after the context, the daemon unpacks and keeps them as a local
    cache's, and builds from its own copy."""
    from tests.integration.test_daemon_build import Daemons

    daemons = Daemons(tmp_path)
    try:
        daemons.start()
        context = write_context(tmp_path / "ctx", DOCKERFILE)
        for attempt in ("cold", "warm"):
            out = tmp_path / f"out-{attempt}"
            result = lazybuild(
                tmp_path / "client-state",
                "build",
                "--progress=plain",
                "--builder",
                daemons.address,
                "--build-context",
                f"base=oci-layout://{esgz_layout}:py",
                "-o",
                f"type=local,dest={out}",
                str(context),
            )
            assert (out / "ran.txt").read_text() == "ran on the layout image\n"
            assert (out / "debian_version").read_text().startswith("12")
            if attempt == "warm":
                assert "CACHED" in result.stderr, result.stderr
            assert str(esgz_layout) not in result.stderr
    finally:
        daemons.stop_all()
