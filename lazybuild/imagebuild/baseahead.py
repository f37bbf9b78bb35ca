"""The base image a build will mount first, read from its Dockerfile in a glance.

The CLI starts the build's filesystem process before it imports the build machinery;
told this image (``--open-image``), the process resolves it and opens its layers (TOC
fetched and verified, EROFS image laid out) while the CLI still starts, parses and
keys the first steps. Only simple Dockerfiles are read this way: anything this does
not understand for sure (a ``# syntax=`` frontend, a variable it cannot expand, a
stage used as a base) gives None, and the build opens its images when it gets there.
A wrong guess costs a manifest and a TOC, never correctness: the build resolves its
images itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["first_base_image"]

_DIRECTIVE = re.compile(r"#\s*syntax\s*=", re.IGNORECASE)
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")
# The Dockerfile's head this looks at: a FROM is near the top of any real one.
_MAX_BYTES = 64 << 10


def first_base_image(dockerfile: bytes, build_args: Mapping[str, str]) -> str | None:
    """The image the first ``FROM`` that names an image (not ``scratch``) resolves to,
    with global ``ARG``s and ``--build-arg`` values expanded; None when unsure."""
    try:
        text = dockerfile[:_MAX_BYTES].decode()
    except UnicodeDecodeError:
        return None
    args: dict[str, str] = {}
    stages: set[str] = set()
    for line in _logical_lines(text):
        if _DIRECTIVE.match(line):
            return None  # another frontend reads this file
        if line.startswith("#") or not line.strip():
            continue
        words = line.split()
        instruction = words[0].upper()
        if instruction == "ARG" and not stages:
            for word in words[1:]:
                name, sep, default = word.partition("=")
                if name in build_args:
                    args[name] = build_args[name]
                elif sep:
                    args[name] = default.strip("\"'")
            continue
        if instruction != "FROM":
            continue
        operands = [word for word in words[1:] if not word.startswith("--")]
        if not operands:
            return None
        image = _expanded(operands[0], args)
        if image is None or image.lower() in stages:
            return None
        if len(operands) >= 3 and operands[1].upper() == "AS":
            stages.add(operands[2].lower())
        if image != "scratch":
            return image
    return None


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append((pending + raw).strip())
        pending = ""
    return lines


def _expanded(word: str, args: Mapping[str, str]) -> str | None:
    unknown = False

    def value(match: re.Match[str]) -> str:
        nonlocal unknown
        name = match.group(1) or match.group(3)
        if name in args:
            return args[name]
        if match.group(2) is not None:
            return match.group(2)
        unknown = True
        return ""

    expanded = _VARIABLE.sub(value, word)
    if unknown or "$" in expanded or not expanded:
        return None
    return expanded
