"""``build --check`` / ``--call=check``, and the build checks' warnings of every build.

The checks read the Dockerfile (and ``.dockerignore``) only, so they run here, in the
client, also when a daemon (``--builder``) does the build: ``--check`` never contacts
it. A build prints the warnings at its end, as buildx does, and stops before building
when the Dockerfile says ``# check=error=true`` and a rule fired.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazybuild.errors import LazybuildError, UsageError

if TYPE_CHECKING:
    from lazybuild.frontend.dockerfile.checks import CheckReport

__all__ = ["CallFunction", "add_check_arguments", "parse_call", "route_build_checks"]

# A `# check=` directive or build arg that may say error=true: then the checks must
# finish before the build starts.
_MAY_ERROR = re.compile(rb"^\s*#\s*check\s*=.*error", re.IGNORECASE | re.MULTILINE)
_CHECK_BUILD_ARG = "BUILDKIT_DOCKERFILE_CHECK"


@dataclass(frozen=True)
class CallFunction:
    """``--call NAME[,format=json][,ignorestatus=true]`` as buildx reads it."""

    name: str
    format: str = ""
    ignore_status: bool = False


def add_check_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument(
        "--call",
        default="build",
        metavar="build|check[,format=json][,ignorestatus=true]",
        help="what to do with the Dockerfile: build it (the default) or only evaluate "
        "its build checks (check); checks run in this process, never in a --builder daemon",
    )
    build.add_argument(
        "--check",
        dest="call",
        action="store_const",
        const="check",
        help='shorthand for "--call=check": print the build checks\' findings and exit '
        "without building (status 1 when there are any)",
    )


_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def parse_call(text: str) -> CallFunction | None:
    """None for a build; a check otherwise (buildx's ``lint`` is called ``check`` here)."""
    name = ""
    format_ = ""
    ignore_status = False
    for field in text.split(","):
        key, sep, value = field.partition("=")
        if not sep:
            if name:
                raise UsageError(f"--call {text!r}: invalid print value")
            name = key.strip()
            continue
        if key == "format":
            if value not in ("json", "text", ""):
                raise UsageError(f"--call {text!r}: format must be json or text")
            format_ = value
        elif key == "ignorestatus":
            if value.lower() not in _BOOLS:
                raise UsageError(f"--call {text!r}: invalid ignorestatus print value: {value}")
            ignore_status = _BOOLS[value.lower()]
        else:
            raise UsageError(f"--call {text!r}: invalid print field: {field}")
    if name in ("", "build"):
        return None
    if name in ("check", "lint"):
        return CallFunction("check", format_, ignore_status)
    raise UsageError(f"--call {name!r}: not supported (build or check)")


def _context(args: argparse.Namespace) -> Path:
    return Path(str(args.context))


def _dockerfile(args: argparse.Namespace) -> Path:
    """The Dockerfile (a stdin or git source is a file by now: ``prepare_sources``)."""
    return Path(str(args.file)) if args.file is not None else _context(args) / "Dockerfile"


def _build_args(args: argparse.Namespace) -> dict[str, str]:
    from lazybuild.cli.build_flags import key_values

    return key_values(args.build_arg, "--build-arg", os.environ)


def _ignored(args: argparse.Namespace) -> Callable[[str], bool] | None:
    """What ``.dockerignore`` excludes, for ``CopyIgnoredFile``; None when there is no
    such file, or when it re-includes anything (as BuildKit, which cannot tell then)."""
    from lazybuild.context.dockerignore import DockerIgnore, find_dockerignore, parse_dockerignore

    path = find_dockerignore(_context(args), _dockerfile(args))
    if path is None:
        return None
    patterns = parse_dockerignore(path.read_bytes(), str(path))
    if any(pattern.startswith("!") for pattern in patterns):
        return None
    return DockerIgnore(patterns).is_excluded


def _report(args: argparse.Namespace) -> CheckReport:
    from lazybuild.frontend.dockerfile.checks import check_dockerfile

    path = _dockerfile(args)
    source = path.read_bytes()
    return check_dockerfile(
        source, filename=path.name, build_args=_build_args(args), ignored=_ignored(args)
    )


def run_check_command(args: argparse.Namespace, interrupted: Callable[[], bool]) -> int:
    """``build --check``: the findings on stdout, as buildx prints them; status 1 when
    there is any (unless ``ignorestatus=true``); ``error=true`` makes them an error."""
    from lazybuild.context.sources import cleanup_sources, prepare_sources
    from lazybuild.frontend.dockerfile.checks import render_check

    call = parse_call(args.call)
    assert call is not None
    prepare_sources(args)  # a Dockerfile on stdin, a git context: made files first
    try:
        report = _report(args)
    finally:
        cleanup_sources(args)
    if report.error is not None:
        message, line = report.error
        raise UsageError(f"{report.filename}:{line}: {message}")
    if call.format == "json":
        print(json.dumps(_json(report), indent=2))
    else:
        sys.stdout.write(render_check(report))
    sys.stdout.flush()
    if report.violation is not None:
        raise UsageError(report.violation)
    return 1 if report.findings and not call.ignore_status else 0


def _json(report: CheckReport) -> dict[str, object]:
    """buildx's ``--call=check,format=json`` document."""
    warnings = [
        {
            "ruleName": finding.rule.name,
            "description": finding.rule.description,
            "url": finding.rule.url,
            "detail": finding.message,
            "location": {
                "ranges": [
                    {"start": {"line": finding.start_line}, "end": {"line": finding.end_line}}
                ]
            },
        }
        for finding in report.findings
    ]
    source = {
        "filename": report.filename,
        "language": "Dockerfile",
        "data": base64.b64encode(report.source.encode()).decode(),
    }
    return {"warnings": warnings, "sources": [source]}


def _shows_warnings(args: argparse.Namespace) -> bool:
    from lazybuild.cli.build_flags import progress_mode

    if args.quiet:
        return False
    try:
        mode = progress_mode(args.progress, os.environ)
    except LazybuildError:
        return False  # the build says what is wrong with it
    return mode not in ("quiet", "rawjson")


class _Checks:
    """A build's checks, run beside it (they are the client's only Dockerfile reading
    when a daemon builds: a thread keeps them off its start-up) or before it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report: CheckReport | None = None
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            self.report = _report(self.args)
        except (OSError, LazybuildError):
            self.report = None  # the build reports an unreadable or bad Dockerfile itself

    def start(self, *, background: bool) -> None:
        if background:
            self.thread = threading.Thread(target=self._run, name="build-checks", daemon=True)
            self.thread.start()
            return
        self._run()
        self.stop_on_violation()

    def stop_on_violation(self) -> None:
        report = self.report
        if report is None or report.violation is None:
            return
        self.print_warnings()
        raise UsageError(report.violation)

    def print_warnings(self) -> None:
        from lazybuild.frontend.dockerfile.checks import render_build_warnings

        if self.thread is not None:
            self.thread.join()
        report = self.report
        if report is None or not report.findings or not _shows_warnings(self.args):
            return
        print(file=sys.stderr)
        print(render_build_warnings(report.findings), file=sys.stderr)


def _may_error(args: argparse.Namespace) -> bool:
    if any(item.startswith(_CHECK_BUILD_ARG + "=") for item in args.build_arg):
        return True
    try:
        with _dockerfile(args).open("rb") as file:
            head = file.read(4096)
    except OSError:
        return False
    return _MAY_ERROR.search(head) is not None


def route_build_checks(args: argparse.Namespace) -> None:
    """``--check``: the command becomes the checks, run here without a filesystem or a
    daemon. Otherwise the build's ``run`` (or ``run_blocking``) is wrapped to print the
    checks' warnings after it, and to stop before it on an ``error=true`` violation."""
    if parse_call(args.call) is not None:
        args.run_blocking = run_check_command
        args.make_filesystem = None
        return
    checks = _Checks(args)
    blocking = args.run_blocking
    if blocking is not None:

        def run_blocking(args: argparse.Namespace, interrupted: Callable[[], bool]) -> int:
            from lazybuild.context.sources import cleanup_sources, prepare_sources

            # The build prepares them too (once: it finds them ready) and removes them.
            prepare_sources(args)
            try:
                checks.start(background=not _may_error(args))
                code: int = blocking(args, interrupted)
                return code
            finally:
                checks.print_warnings()
                cleanup_sources(args)

        args.run_blocking = run_blocking
        return
    run: Callable[[argparse.Namespace], Awaitable[int]] = args.run

    async def run_with_checks(args: argparse.Namespace) -> int:
        from lazybuild.context.sources import cleanup_sources, prepare_sources

        prepare_sources(args)  # done already when main forked the filesystem process
        try:
            checks.start(background=False)
            return await run(args)
        finally:
            checks.print_warnings()
            cleanup_sources(args)

    args.run = run_with_checks
