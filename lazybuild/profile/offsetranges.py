"""``[[offset, length], ...]`` in JSON: places in a file, as the workload record and the
filesystem's control protocol carry them."""

from __future__ import annotations

from lazybuild.errors import FormatError


def decode_offset_ranges(value: object, problem: str) -> list[tuple[int, int]]:
    """The (offset, length) pairs ``value`` lists; FormatError(``problem``) for anything
    else (a pair of another size, a negative or non-integer number)."""
    if not isinstance(value, list):
        raise FormatError(problem)
    ranges = []
    for pair in value:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)
        ):
            raise FormatError(problem)
        ranges.append((pair[0], pair[1]))
    return ranges
