"""BuildKit's "did you mean" hints for a mistyped name (its ``util/suggest``)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["did_you_mean", "suggestion"]

# As BuildKit (and HCL): only names fewer than 3 edits away are suggested.
_MAX_DISTANCE = 3


def _distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions cost 1."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            cost = 0 if char_a == char_b else 1
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost))
        previous = current
    return previous[-1]


def suggestion(value: str, options: Iterable[str]) -> str | None:
    """The closest option to ``value``, or None when none is close or ``value`` is one."""
    best: str | None = None
    best_distance = _MAX_DISTANCE
    for option in options:
        if option == value:
            return None
        distance = _distance(value, option)
        if distance < best_distance:
            best, best_distance = option, distance
    return best


def did_you_mean(message: str, value: str, options: Iterable[str]) -> str:
    """``message`` with BuildKit's `` (did you mean X?)`` when an option is close."""
    match = suggestion(value, options)
    return message if match is None else f"{message} (did you mean {match}?)"
