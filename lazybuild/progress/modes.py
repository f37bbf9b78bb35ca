"""The modes of ``--progress`` (as ``docker buildx build`` has them), apart from the
display itself, so that the CLI's parser does not load it."""

from __future__ import annotations

from typing import Literal

Mode = Literal["auto", "tty", "plain", "rawjson", "quiet"]
MODES: tuple[Mode, ...] = ("auto", "tty", "plain", "rawjson", "quiet")
