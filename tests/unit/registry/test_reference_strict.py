"""References and Content-Range headers: exact grammar, no trailing newline, no other digits."""

from __future__ import annotations

import pytest

from lazybuild.errors import InvalidReferenceError, RegistryError
from lazybuild.registry.ranges import parse_content_range
from lazybuild.registry.reference import Reference


@pytest.mark.parametrize(
    "text",
    [
        "a\n/b",
        "example.com/a\n/b",
        "ubuntu:t\u00e4g",
        "example.com\n/b",
        "ubuntu@sha256:" + "a" * 64 + "\n" + "x",
        "a/" * 400 + "b",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        Reference.parse(text)


def test_with_tag_refuses_a_trailing_newline() -> None:
    with pytest.raises(InvalidReferenceError):
        Reference.parse("ubuntu").with_tag("latest\n")


@pytest.mark.parametrize(
    "value",
    [
        "bytes 0-1/2\n",
        "bytes \u0661-\u0662/\u0663",
        "bytes " + "1" * 5000 + "-2/3",
        "bytes 0-" + "9" * 30 + "/*",
    ],
)
def test_bad_content_ranges_are_registry_errors(value: str) -> None:
    with pytest.raises(RegistryError):
        parse_content_range(value, "blob")


def test_good_content_range() -> None:
    parsed = parse_content_range(" bytes 5-9/10 ", "blob")
    assert (parsed.start, parsed.end, parsed.total) == (5, 9, 10)


def test_multipart_boundary_outside_latin1_is_a_registry_error() -> None:
    from lazybuild.registry.ranges import parse_multipart_byteranges

    with pytest.raises(RegistryError, match="latin-1"):
        parse_multipart_byteranges(b"--x\n", "\u20ac", "blob")
