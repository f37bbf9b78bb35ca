"""Frontends through the gateway, end to end: ``# syntax=`` picks an installed entry point
or a frontend image.

The Go-module frontend (``frontends/gomodule``, installed by ``just setup``) builds
examples/go-ci's program with the real golang builder, lazily mounted from the test
registry, with no Dockerfile; the image is pushed and run. The same frontend, made into
a frontend image by lazybuild itself (a Python base from the fixtures, the gateway
client and the frontend copied in), builds it again from inside a container with no
network, talking to the build over its stdio. Frontends that crash or
return garbage are real entry points too, installed for one command through
``PYTHONPATH`` (a ``.dist-info`` next to their module): each fails the build with one
line naming it, after solving, running a step and reading a result, and leaves nothing
behind. The Dockerfile path is covered, unchanged, by the other build suites.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.buildsupport import assert_nothing_left, lazybuild
from tests.e2e.test_build_lazy import builder_layout  # noqa: F401 - the shared fixture
from tests.support.imagebuild import cached_rootfs_image
from tests.support.push import push_oci_layout
from tests.support.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "go-ci"
# What a frontend image needs of lazybuild: the graph contract and the gateway client.
CLIENT_FILES = [
    "lazybuild/__init__.py",
    "lazybuild/errors.py",
    *(str(path.relative_to(REPO)) for path in sorted((REPO / "lazybuild/graph").glob("*.py"))),
    "lazybuild/gateway/__init__.py",
    "lazybuild/gateway/contract.py",
    "lazybuild/gateway/wire.py",
    "lazybuild/gateway/stdio.py",
]
FRONTEND_IMAGE_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY . /opt/frontend/
ENV PYTHONPATH=/opt/frontend PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["python3", "-m", "lazybuild.gateway.stdio", "lazybuild_gomodule:build"]
"""

# Frontends that go wrong, after doing real work through the gateway: a step run in
# runc, a result mounted and read.
MISBEHAVING = """
from lazybuild.gateway import FrontendResult, Ref
from lazybuild.graph import State, marshal


async def _work(gateway):
    base = State.image(gateway.inputs.build_args["BASE"], gateway.inputs.platform)
    ran = base.run(["/usr/bin/echo", "ran"], network="none")
    ref = await gateway.solve(marshal(ran.root()))
    assert await gateway.read_file(ref, "/hello.txt")
    return ref


async def crash(gateway):
    await _work(gateway)
    raise RuntimeError("the frontend fell over")


async def forged(gateway):
    await _work(gateway)
    return FrontendResult(Ref("0" * 32), {})


async def bad_config(gateway):
    return FrontendResult(await _work(gateway), {"config": {"Entrypoint": "/app"}})


async def nothing(gateway):
    await _work(gateway)
"""


@pytest.fixture(scope="module")
def builder(registry: Registry, builder_layout: Path) -> str:  # noqa: F811
    push_oci_layout(builder_layout, registry.host, "e2e-frontends/builder", "esgz")
    return f"{registry.host}/e2e-frontends/builder:esgz"


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, on PYTHONPATH, installs the misbehaving frontends."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "e2e_misbehaving.py").write_text(MISBEHAVING)
    info = root / "e2e_misbehaving-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: e2e-misbehaving\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[lazybuild.frontends]\n"
        "crashing = e2e_misbehaving:crash\n"
        "forging = e2e_misbehaving:forged\n"
        "bad-config = e2e_misbehaving:bad_config\n"
        "returns-nothing = e2e_misbehaving:nothing\n"
    )
    return root


@pytest.fixture(scope="module")
def python_base(registry: Registry, python_rootfs: Path) -> str:
    push_oci_layout(cached_rootfs_image(python_rootfs), registry.host, "e2e-frontends/py", "gz")
    return f"{registry.host}/e2e-frontends/py:gz"


def _frontend_image(
    registry: Registry, python_base: str, tmp_path: Path, name: str, dockerfile: str
) -> str:
    """A frontend image built by lazybuild, pushed to the test registry."""
    context = tmp_path / f"{name}-image"
    for rel in CLIENT_FILES:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, context / rel)
    package = REPO / "frontends" / "gomodule" / "lazybuild_gomodule"
    shutil.copytree(package, context / "lazybuild_gomodule", ignore=shutil.ignore_patterns("*.pyc"))
    (context / "Dockerfile").write_text(dockerfile)
    image = f"{registry.host}/e2e-frontends/{name}:1"
    lazybuild(
        tmp_path / "image-state", "build", "--build-arg", f"BASE={python_base}", "-t", image,
        "--push", "--no-optimize", str(context),
    )  # fmt: skip
    return image


def test_the_gomodule_frontend_builds_a_go_program_onto_an_empty_image(
    builder: str, registry: Registry, tmp_path: Path
) -> None:
    context = tmp_path / "go-ci"
    shutil.copytree(EXAMPLE, context)
    (context / "Dockerfile").unlink()  # no Dockerfile: the frontend needs none
    build_file = tmp_path / "build.toml"
    build_file.write_text(f'# syntax=gomodule\nbuilder = "{builder}"\nargs = ["gateway"]\n')
    state = tmp_path / "state"
    image = f"{registry.host}/e2e-frontends/goci:gomodule"
    built = lazybuild(
        state, "build", "--progress=plain", "-f", str(build_file), "-t", image, "--push",
        str(context), timeout=900,
    )  # fmt: skip
    assert "[gomodule] go build . (example.com/goci)" in built.stderr, built.stderr

    ran = lazybuild(state, "run", image)
    assert "hello, gateway, from a Go program built in CI by lazybuild" in ran.stdout

    # Only the binary, static, at the root of an empty image; built again, every step is
    # a cache hit (the context's solve and the build's).
    out = tmp_path / "rootfs"
    again = lazybuild(
        state, "build", "--progress=plain", "-f", str(build_file), "-o",
        f"type=local,dest={out}", str(context),
    )  # fmt: skip
    assert sorted(path.name for path in out.iterdir()) == ["goci"]
    assert (out / "goci").read_bytes()[:4] == b"\x7fELF"
    assert "CACHED" in again.stderr, again.stderr
    assert " DONE " not in again.stderr, again.stderr
    assert_nothing_left(state)


def test_a_frontend_that_is_not_installed_is_one_line(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("# syntax=no-such-frontend\nFROM scratch\n")
    state = tmp_path / "state"
    result = lazybuild(state, "build", str(context), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("lazybuild: error: frontend 'no-such-frontend' (# syntax=)")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("frontend", "expected"),
    [
        ("crashing", "frontend crashing crashed: RuntimeError: the frontend fell over"),
        ("forging", "frontend forging returned a reference that no solve of this build returned"),
        (
            "bad-config",
            "frontend bad-config returned an invalid image config: "
            "config.Entrypoint must be a list of strings",
        ),
        ("returns-nothing", "frontend returns-nothing returned a NoneType, not a FrontendResult"),
    ],
)
def test_a_frontend_that_crashes_or_returns_garbage_fails_with_one_line_and_leaves_nothing(
    frontend: str, expected: str, plugins: Path, tiny_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    # The build arg selects the frontend over the file's own directive, as in BuildKit.
    (context / "Dockerfile").write_text("# syntax=docker/dockerfile:1\nFROM scratch\n")
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(plugins)}
    result = lazybuild(
        state, "build", "--progress=plain", "--build-arg", f"BUILDKIT_SYNTAX={frontend}",
        "--build-arg", f"BASE={tiny_image}", str(context), check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"lazybuild: error: {expected}"
    assert "Traceback" not in result.stderr
    # The step really ran before the frontend went wrong.
    assert any(line.endswith(" ran") for line in result.stderr.splitlines()), result.stderr
    assert_nothing_left(state)


def test_the_gomodule_frontend_as_a_frontend_image(
    builder: str, python_base: str, registry: Registry, tmp_path: Path
) -> None:
    frontend = _frontend_image(
        registry, python_base, tmp_path, "gomodule-frontend", FRONTEND_IMAGE_DOCKERFILE
    )
    context = tmp_path / "go-ci"
    shutil.copytree(EXAMPLE, context)
    (context / "Dockerfile").unlink()
    build_file = tmp_path / "build.toml"
    build_file.write_text(f'# syntax={frontend}\nbuilder = "{builder}"\nargs = ["image"]\n')
    state = tmp_path / "state"
    image = f"{registry.host}/e2e-frontends/goci:from-image"
    built = lazybuild(
        state, "build", "--progress=plain", "-f", str(build_file), "-t", image, "--push",
        str(context), timeout=900,
    )  # fmt: skip
    assert "[gomodule] go build . (example.com/goci)" in built.stderr, built.stderr
    ran = lazybuild(state, "run", image)
    assert "hello, image, from a Go program built in CI by lazybuild" in ran.stdout
    assert_nothing_left(state)


GOMODULE_ENTRYPOINT = '["python3", "-m", "lazybuild.gateway.stdio", "lazybuild_gomodule:build"]'


# Garbage on stdout, an exit without a result, an entrypoint runc cannot start, the
# frontend's own error for its input.
@pytest.mark.parametrize(
    ("name", "entrypoint", "source", "expected"),
    [
        (
            "garbage-frontend",
            '["python3", "-c", "import sys, time; sys.stdout.write(\'garbage!\'); '
            'sys.stdout.flush(); time.sleep(600)"]',
            "",
            "protocol error: a message of 1734439522 bytes announced, over ",
        ),
        (
            "exiting-frontend",
            '["python3", "-c", "import sys; print(\'no luck\', file=sys.stderr); sys.exit(3)"]',
            "",
            "exited with code 3 without a result: no luck",
        ),
        ("missing-frontend", '["/no/such/frontend"]', "", "cannot start: "),
        (
            "gomodule-frontend",
            GOMODULE_ENTRYPOINT,
            'builder = "unused"\n',
            "the build context holds no go.mod: not a Go module",
        ),
    ],
)
def test_a_frontend_image_that_goes_wrong_fails_with_one_line_and_leaves_nothing(
    name: str,
    entrypoint: str,
    source: str,
    expected: str,
    python_base: str,
    registry: Registry,
    tmp_path: Path,
) -> None:
    dockerfile = FRONTEND_IMAGE_DOCKERFILE.replace(GOMODULE_ENTRYPOINT, entrypoint)
    frontend = _frontend_image(registry, python_base, tmp_path, name, dockerfile)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"# syntax={frontend}\n{source}")
    state = tmp_path / "state"
    result = lazybuild(state, "build", str(context), check=False, timeout=300)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lazybuild: error: frontend {frontend}: {expected}"), last
    assert "Traceback" not in result.stderr
    assert_nothing_left(state)
