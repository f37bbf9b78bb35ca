"""``clean_name``'s shortcut for names that are clean already gives what Go's
``path.Clean`` rule gives, for every spelling of a short path."""

from __future__ import annotations

import itertools
import posixpath

from lazybuild.estargz.index import clean_name


def _reference(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def test_every_short_spelling_cleans_as_path_clean_does() -> None:
    for length in range(9):
        for letters in itertools.product("a./", repeat=length):
            name = "".join(letters)
            assert clean_name(name) == _reference(name), name


def test_names_that_look_alike_clean_as_path_clean_does() -> None:
    for name in ["usr/lib/.hidden", "..a", "a..", "a/..b", "a/b..", ".wh..wh..opq", "é/ü", "a b/c"]:
        assert clean_name(name) == _reference(name), name
