"""An OSError for want of space in the state directory reaching the CLI is one line
naming the directory and the command, not the write that happened to fail first."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from lazybuild.cli.main import _state_dir_full


def _args(state: Path) -> argparse.Namespace:
    return argparse.Namespace(state_dir=state, command="run")


def test_a_full_state_dir_is_named(tmp_path: Path) -> None:
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "chunks" / "x.tmp"))
    message = _state_dir_full(error, _args(tmp_path))
    assert message is not None
    assert message.startswith(f"no space left in the state directory {tmp_path}")
    assert "lazybuild run" in message


def test_a_full_disk_elsewhere_is_left_to_the_error_itself(tmp_path: Path) -> None:
    error = OSError(errno.ENOSPC, "No space left on device", "/somewhere/else")
    assert _state_dir_full(error, _args(tmp_path)) is None
    assert _state_dir_full(OSError(errno.EACCES, "denied", str(tmp_path)), _args(tmp_path)) is None
