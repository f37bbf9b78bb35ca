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
