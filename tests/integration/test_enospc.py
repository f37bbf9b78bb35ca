"""A full state directory (a small tmpfs): one clear error line, nothing left, a cache
that is consistent afterwards.

The state dir is a 32 MiB tmpfs mounted by the test (and unmounted after). The base
image (Debian minbase as eStargz, ~100 MiB unpacked) does not fit in it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from tests.e2e.buildsupport import lazybuild, write_context
from tests.integration.test_crash_safety import assert_cache_consistent, leftovers
from tests.support.procs import unmount_all_under
from tests.support.registry import Registry

pytestmark = pytest.mark.root

SIZE = "32m"


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/enospc/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        unmount_all_under(state)
        subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lazybuild: error")]


def assert_one_clear_error(done: subprocess.CompletedProcess[str], state: Path) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert f"no space left in the state directory {state}" in lines[0], done.stderr


def test_run_reading_more_than_the_state_dir_holds(
    base_image: str, small_state: Path, tmp_path: Path
) -> None:
    # Every file of the image read: more chunks than the cache can hold. The chunk cache
    # is only a cache: chunks it cannot keep are served all the same, so the run works.
    done = lazybuild(
        small_state,
        "run",
        base_image,
        "sh",
        "-c",
        "tar -cf - /usr /etc /var 2>/dev/null | wc -c",
        check=False,
        timeout=300,
    )
    print(done.stderr)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert int(done.stdout.split()[-1]) > 64 << 20
    assert leftovers(small_state) == []
    assert_cache_consistent(small_state)
    # And the next command works.
    lazybuild(small_state, "run", base_image, "true")


def test_build_whose_layer_does_not_fit(
    base_image: str, small_state: Path, tmp_path: Path, registry: Registry
) -> None:
    context = write_context(
        tmp_path / "context",
        "ARG BASE\nFROM ${BASE}\nRUN head -c 48M /dev/zero > /big && echo done\n",
    )
    done = lazybuild(
        small_state, "build", "--build-arg", f"BASE={base_image}", str(context), check=False
    )
    print(done.stderr)
    assert_one_clear_error(done, small_state)
    assert leftovers(small_state) == []
    assert_cache_consistent(small_state)
    # With room again (a smaller layer), the next build works.
    write_context(context, "ARG BASE\nFROM ${BASE}\nRUN head -c 1M /dev/zero > /big && echo done\n")
    lazybuild(small_state, "build", "--build-arg", f"BASE={base_image}", str(context))
    assert leftovers(small_state) == []
    assert_cache_consistent(small_state)


def test_export_whose_blobs_do_not_fit(base_image: str, small_state: Path, tmp_path: Path) -> None:
    # The layer fits (12 MB), but not with its tar and its eStargz blob beside it.
    context = write_context(
        tmp_path / "context",
        "ARG BASE\nFROM ${BASE}\nRUN head -c 12M /dev/urandom > /big && echo done\n",
    )
    out = tmp_path / "out.tar"
    done = lazybuild(
        small_state,
        "build",
        "--build-arg",
        f"BASE={base_image}",
        "-o",
        f"type=oci,dest={out}",
        str(context),
        check=False,
    )
    print(done.stderr)
    assert_one_clear_error(done, small_state)
    assert "while exporting the image" in done.stderr
    assert leftovers(small_state) == []
    assert_cache_consistent(small_state)
