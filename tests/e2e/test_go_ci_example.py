"""``examples/go-ci`` as a user runs it: ``make`` builds the image (its ``--iidfile`` is
the target, its ``--depfile`` the rule), does nothing when no input changed or when a
file the build does not read changed, rebuilds when a copied file changed, and ``make
test`` pushes and runs the image. The golang builder is a real Debian one, mounted
lazily from the test registry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.buildsupport import assert_nothing_left
from tests.e2e.test_build_lazy import builder_layout  # noqa: F401 - the shared fixture
from tests.support.push import push_oci_layout
from tests.support.registry import Registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "go-ci"


@pytest.fixture(scope="module")
def builder(registry: Registry, builder_layout: Path) -> str:  # noqa: F811
    push_oci_layout(builder_layout, registry.host, "e2e-go-ci/builder", "esgz")
    return f"{registry.host}/e2e-go-ci/builder:esgz"


def _make(directory: Path, state: Path, builder: str, *targets: str) -> str:
    lazybuild = f"{sys.executable} -m lazybuild --state-dir {state}"
    result = subprocess.run(
        ["make", "-C", str(directory), f"LAZYBUILD={lazybuild}", f"BUILDER={builder}", *targets],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_make_rebuilds_exactly_when_an_input_changed(
    builder: str, registry: Registry, tmp_path: Path
) -> None:
    work = tmp_path / "go-ci"
    shutil.copytree(EXAMPLE, work)
    state = tmp_path / "state"
    _make(work, state, builder)
    first = (work / "image.iid").read_text()
    assert first.startswith("sha256:")
    listed = (work / "image.d").read_text()
    rules = {line.removesuffix(":") for line in listed.splitlines() if line.endswith(":")}
    assert {"Dockerfile", ".dockerignore", "go.mod", "main.go"} <= rules, listed
    assert "internal/greeting/greeting.go" in rules, listed
    assert "README.md" not in listed and "Makefile" not in listed
    # Nothing changed: make does nothing (lazybuild is not even started).
    assert "is up to date" in _make(work, state, builder)
    # A file the build does not read (.dockerignore leaves it out): still nothing.
    os.utime(work / "README.md")
    assert "is up to date" in _make(work, state, builder)
    # A copied file changed: the image is rebuilt, and it is another image.
    main = work / "main.go"
    main.write_text(main.read_text().replace('name := "world"', 'name := "fleet"'))
    rebuilt = _make(work, state, builder)
    assert "is up to date" not in rebuilt
    assert (work / "image.iid").read_text() != first
    # make test: push, then run the pushed image.
    image = f"{registry.host}/e2e-go-ci/app:test"
    shown = _make(work, state, builder, f"IMAGE={image}", "test")
    assert "hello, ci, from a Go program built in CI by lazybuild" in shown, shown
    assert_nothing_left(state)


def test_a_fresh_runner_finds_gos_build_cache_through_the_registry(
    builder: str, registry: Registry, tmp_path: Path
) -> None:
    """Runner A exports its cache with Go's build and module caches (``cache-mounts=true``);
    runner B, fresh, changes ``main.go``: its ``go build`` runs and finds A's build cache,
    so it compiles the main package only (``go build -v`` names what it compiles), reading
    a fraction of the exported cache lazily."""
    work = tmp_path / "go-ci"
    shutil.copytree(EXAMPLE, work)
    cache = f"{registry.host}/e2e-go-ci/cache:go"
    export = f"type=registry,ref={cache},mode=max,cache-mounts=true"

    def build(state: str, *options: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "lazybuild", "--state-dir", str(tmp_path / state), "build",
             "--progress=plain", "--build-arg", f"BUILDER={builder}", "--fetch-report",
             str(tmp_path / f"{state}.json"), *options, str(work)],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stderr

    first = build("a", "--cache-to", export)
    assert "example.com/goci/internal/greeting" in first, first
    main = work / "main.go"
    main.write_text(main.read_text().replace('name := "world"', 'name := "fleet"'))
    second = build("b", "--cache-from", cache)
    compiled = [line for line in second.splitlines() if "example.com/goci" in line]
    assert any(line.rstrip().endswith("example.com/goci") for line in compiled), second
    assert not any("internal/greeting" in line for line in compiled), compiled
    assert "cache mount(s) from the imported cache" in second
    assert_nothing_left(tmp_path / "b")
