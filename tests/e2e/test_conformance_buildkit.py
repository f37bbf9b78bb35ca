"""BuildKit conformance: cases translated from BuildKit's own Dockerfile frontend tests
(moby/buildkit, frontend/dockerfile/*_test.go), built with lazybuild and checked against
what the Go tests assert. One case per directory of tests/conformance/buildkit; what a
case.json may say is in tests/conformance/README.md.

One registry (the session's) and one HTTP server (for ADD <url>) serve the whole module.
Builds run two at a time in a thread pool, started for every selected case when the
first test asks for a result, so the module's wall time is about half the sum of its
builds. Each of the two threads keeps one lazybuild state directory for its builds (so
base layers are fetched twice, not once per case): two builds starting together in one
state directory are not reliable yet (tests/conformance/README.md, "Failures found").
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import imagebuild
from tests.support.conformance import (
    ROOT_CONTENT,
    Case,
    CaseResult,
    Environment,
    all_case_names,
    build_case,
    check_case,
    cleanup,
    describe,
)
from tests.support.differential import cached_slim_debian_layout
from tests.support.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.slow]

PARALLEL_BUILDS = 2
CASE_NAMES = all_case_names()


def _param(name: str) -> Any:
    case = Case.load(name)
    marks = []
    if case.pending:
        marks.append(pytest.mark.xfail(strict=True, reason=f"issue 17: {case.issue17}"))
    elif case.bug:
        marks.append(pytest.mark.xfail(strict=True, reason=f"lazybuild bug: {case.bug}"))
    return pytest.param(name, id=name, marks=marks)


# The items of issue 17: every one has cases (case.json "issue17").
ISSUE_17_ITEMS = (
    "ADD --unpack",
    "proxy build args in both spellings",
    "COPY --parents with wildcards before ./ and **",
    "${var#…}/##/%/%% and ${var/…/…} expansion",
    "'${name}' in an unquoted heredoc",
    "ONBUILD when a stage of the same Dockerfile is the base",
    "heredocs on other fds (3<<IN1)",
    "TARGETSTAGE",
    "cache mount source=",
    "ADD --checksum format validation before fetching",
    "--mount=from=STAGE,src=DIR keyed on the directory's content",
    "did-you-mean hints",
    "FROM scratch WorkingDir /",
)


def test_the_suite_is_whole() -> None:
    """At least 80 cases (issue 17), each with its origin; a deliberate difference
    says why, an unfinished fix names its issue item, and every item has cases."""
    assert len(CASE_NAMES) >= 80, len(CASE_NAMES)
    covered = {Case.load(name).issue17 for name in CASE_NAMES}
    assert not set(ISSUE_17_ITEMS) - covered, set(ISSUE_17_ITEMS) - covered
    assert not covered - set(ISSUE_17_ITEMS) - {None}, covered - set(ISSUE_17_ITEMS)
    for name in CASE_NAMES:
        case = Case.load(name)
        assert "_test.go" in case.origin, f"{name}: origin {case.origin!r}"
        assert (case.directory / case.dockerfile).is_file(), name
        if case.pending:
            assert case.issue17, f"{name}: pending on which item of issue 17?"
        if case.difference is not None:
            assert len(case.difference) > 20, f"{name}: say why lazybuild differs"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the cases' context copies; the root path answers ROOT_CONTENT (a URL with
    no file name, for ADD's __unnamed__)."""

    def do_GET(self) -> None:
        if self.path != "/":
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(ROOT_CONTENT)))
        self.end_headers()
        self.wfile.write(ROOT_CONTENT)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def work_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where each case is built: <case>/context (its copy of the context), outputs."""
    root = tmp_path_factory.mktemp("conformance")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def http_url(work_root: Path) -> Iterator[str]:
    """The cases' copies of their contexts over HTTP on loopback (each case's served/
    directory, for ADD <url>, which a rebuild may change)."""
    handler = functools.partial(_Handler, directory=str(work_root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def environment(
    debian_rootfs: Path,
    registry: Registry,
    http_url: str,
    work_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Environment:
    layout = cached_slim_debian_layout(debian_rootfs)
    imagebuild.push_oci_layout(layout, registry.host, "test/debian", "bookworm-slim")
    return Environment(
        state_dir=tmp_path_factory.mktemp("lazybuild-state"),
        registry=registry.host,
        base_image=f"{registry.host}/test/debian:bookworm-slim",
        http_url=http_url,
        served_root=work_root,
    )


@pytest.fixture(scope="module")
def builds(
    request: pytest.FixtureRequest, environment: Environment, work_root: Path
) -> Iterator[dict[str, Future[CaseResult]]]:
    """Every selected case's build, started in order on a pool of PARALLEL_BUILDS
    threads, each with a lazybuild state directory of its own."""
    selected: list[str] = []
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.module is request.module:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            if "name" in params:
                selected.append(str(params["name"]))
    root = work_root
    worker_states: dict[int, Path] = {}
    states_lock = threading.Lock()

    def build(name: str) -> CaseResult:
        # One state directory per worker thread: builds of one state directory never
        # run at once here (see the README: two builds starting together in one state
        # directory can remove each other's mount record or export scratch directory).
        with states_lock:
            state = worker_states.setdefault(
                threading.get_ident(), environment.state_dir / f"worker-{len(worker_states)}"
            )
        env = dataclasses.replace(environment, state_dir=state)
        return build_case(Case.load(name), env, root / name)

    with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS) as pool:
        futures = {name: pool.submit(build, name) for name in dict.fromkeys(selected)}
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()


@pytest.mark.parametrize("name", [_param(name) for name in CASE_NAMES])
def test_case(
    name: str, builds: dict[str, Future[CaseResult]], request: pytest.FixtureRequest
) -> None:
    case = Case.load(name)
    result = builds[name].result()
    # The case's build time, for a junit report (-o junit_family=legacy shows it).
    request.node.user_properties.append(("build_seconds", round(result.seconds, 2)))
    try:
        problems = check_case(case, result)
    finally:
        cleanup(result)
    where = f"{name} (from {case.origin})"
    if case.difference:
        where += f"; deliberate difference: {case.difference}"
    assert not problems, f"{where}:\n  " + "\n  ".join(problems) + "\n" + describe(result)
