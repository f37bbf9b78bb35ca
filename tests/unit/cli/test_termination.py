"""SIGTERM before trio runs: the command ends as interrupted (exit 130), never by a signal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The signal arrives inside an ``exec`` of a string, the way it does while an import
# makes a dataclass. A handler that raised KeyboardInterrupt there left CPython's
# "unhandled KeyboardInterrupt" flag set, and the process died by SIGINT on exit even
# though lazybuild had printed "interrupted" and returned 130.
_TERMINATED_DURING_EXEC = textwrap.dedent(
    """
    import sys
    from lazybuild.cli import main as cli

    real_build_parser = cli.build_parser

    def build_parser_then_terminated():
        exec("import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\nafter = 1")
        return real_build_parser()

    cli.build_parser = build_parser_then_terminated
    sys.argv = ["lazybuild", "--state-dir", sys.argv[1], "du"]
    cli.run()
    """
)


def test_sigterm_during_an_exec_before_trio_exits_130(tmp_path: Path) -> None:
    # Run with -m, like `python -m lazybuild`: that is the path on which CPython checks
    # the flag after a SystemExit.
    (tmp_path / "terminated_during_exec.py").write_text(_TERMINATED_DURING_EXEC)
    done = subprocess.run(
        [sys.executable, "-m", "terminated_during_exec", str(tmp_path / "state")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr.strip() == "lazybuild: interrupted"


# A command whose synchronous part (no checkpoint) takes a Ctrl-C: it must finish that
# part, then be cancelled at its next checkpoint, and say "interrupted". A second Ctrl-C
# during its cleanup forces it, as a KeyboardInterrupt.
_INTERRUPTED_IN_SYNC_CODE = textwrap.dedent(
    """
    import os, signal, sys, time
    import trio
    from lazybuild.cli import main as cli

    marks = open(sys.argv[2], "w", buffering=1)
    times = sys.argv[3]

    async def command(args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)  # a KeyboardInterrupt raised here would skip the next line
        marks.write("sync part finished\\n")
        try:
            await trio.sleep(30)
        finally:
            with trio.CancelScope(shield=True):
                marks.write("cancelled at the checkpoint\\n")
                if times == "twice":
                    try:
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(5)
                    except KeyboardInterrupt:
                        marks.write("second Ctrl-C forced the cleanup\\n")
                        raise
        return 0

    real_build_parser = cli.build_parser

    def build_parser():
        parser = real_build_parser()
        original = parser.parse_args

        def parse_args(argv=None):
            args = original(argv)
            args.run = command
            return args

        parser.parse_args = parse_args
        return parser

    cli.build_parser = build_parser
    sys.argv = ["lazybuild", "--state-dir", sys.argv[1], "du"]
    cli.run()
    """
)


def _interrupted_in_sync_code(tmp_path: Path, times: str) -> tuple[int, str, list[str]]:
    (tmp_path / "interrupted_in_sync_code.py").write_text(_INTERRUPTED_IN_SYNC_CODE)
    marks = tmp_path / "marks"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "interrupted_in_sync_code",
            str(tmp_path / "state"),
            str(marks),
            times,
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr, marks.read_text().splitlines()


def test_ctrl_c_cancels_at_a_checkpoint_not_in_the_middle_of_a_line(tmp_path: Path) -> None:
    code, stderr, marks = _interrupted_in_sync_code(tmp_path, "once")
    assert marks == ["sync part finished", "cancelled at the checkpoint"], (marks, stderr)
    assert code == 130, stderr
    assert stderr.strip() == "lazybuild: interrupted"


def test_a_second_ctrl_c_forces_a_cleanup(tmp_path: Path) -> None:
    code, stderr, marks = _interrupted_in_sync_code(tmp_path, "twice")
    assert marks[-1] == "second Ctrl-C forced the cleanup", (marks, stderr)
    assert code == 130, stderr
    assert stderr.strip() == "lazybuild: interrupted"
