"""Golden tests in BuildKit's style: a directory per case, the expected dump beside it.

Cases are the Dockerfiles under ``tests/dockerfiles/<case>/`` (shared with the
differential build tests; an optional ``build.json`` gives ``build_args``/``target``)
plus parser-only cases with their own ``Dockerfile`` under ``testdata/<case>/``.
Expected output lives in ``testdata/<case>/ast.txt`` and ``plan.json``. Dockerfiles
that must fail live in ``testdata/negative/<case>/`` with the message in ``error.txt``.

Run with ``LAZYBUILD_UPDATE_GOLDEN=1`` to rewrite the expected files, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazybuild.errors import LazybuildError
from lazybuild.frontend.dockerfile import parse, plan_build
from lazybuild.frontend.dockerfile.dump import dump_ast, plan_to_json
from lazybuild.oci.platform import Platform

TESTS = Path(__file__).resolve().parents[2]
DOCKERFILES = TESTS / "dockerfiles"
TESTDATA = Path(__file__).resolve().parent / "testdata"
UPDATE = os.environ.get("LAZYBUILD_UPDATE_GOLDEN") == "1"
# Fixed platforms so that the expected plans do not depend on the test machine.
TARGET_PLATFORM = Platform("linux", "arm", "v7")
BUILD_PLATFORM = Platform("linux", "amd64")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _image_env(ref: str, platform: str | None) -> list[tuple[str, str]]:
    """Stands in for the image config lookup: every base image has Debian's PATH."""
    return [("PATH", DEFAULT_PATH)]


NEGATIVE = TESTDATA / "negative"


def _case_dirs() -> dict[str, Path]:
    cases = {path.name: path for path in DOCKERFILES.iterdir() if (path / "Dockerfile").is_file()}
    for path in TESTDATA.iterdir():
        if (path / "Dockerfile").is_file():
            cases[path.name] = path
    return dict(sorted(cases.items()))


CASES = _case_dirs()
NEGATIVE_CASES = sorted(path.name for path in NEGATIVE.iterdir() if path.is_dir())


def _check(expected_path: Path, actual: str) -> None:
    if UPDATE:
        expected_path.parent.mkdir(parents=True, exist_ok=True)
        expected_path.write_text(actual)
        return
    assert expected_path.is_file(), f"missing {expected_path}; run with LAZYBUILD_UPDATE_GOLDEN=1"
    assert actual == expected_path.read_text()


def test_at_least_25_shared_dockerfiles() -> None:
    shared = [path for path in DOCKERFILES.iterdir() if (path / "Dockerfile").is_file()]
    assert len(shared) >= 25


@pytest.mark.parametrize("case", CASES)
def test_ast(case: str) -> None:
    dockerfile = parse((CASES[case] / "Dockerfile").read_bytes())
    _check(TESTDATA / case / "ast.txt", dump_ast(dockerfile))


@pytest.mark.parametrize("case", CASES)
def test_plan(case: str) -> None:
    options_path = CASES[case] / "build.json"
    options = json.loads(options_path.read_text()) if options_path.is_file() else {}
    plan = plan_build(
        (CASES[case] / "Dockerfile").read_bytes(),
        build_args=options.get("build_args", {}),
        target=options.get("target"),
        target_platform=TARGET_PLATFORM,
        build_platform=BUILD_PLATFORM,
        image_env=_image_env,
    )
    _check(TESTDATA / case / "plan.json", plan_to_json(plan))


@pytest.mark.parametrize("case", NEGATIVE_CASES)
def test_negative(case: str) -> None:
    with pytest.raises(LazybuildError) as caught:
        plan_build(
            (NEGATIVE / case / "Dockerfile").read_bytes(),
            target_platform=TARGET_PLATFORM,
            build_platform=BUILD_PLATFORM,
        )
    _check(NEGATIVE / case / "error.txt", str(caught.value) + "\n")
