"""validate_digest takes exactly ``algorithm:hex`` (issue 13, item 5)."""

from __future__ import annotations

import pytest

from lazybuild.errors import FormatError
from lazybuild.oci.digest import validate_digest

GOOD = "sha256:" + "a" * 64


def test_a_well_formed_digest_passes() -> None:
    assert validate_digest(GOOD) == GOOD
    assert validate_digest("sha512:" + "0" * 128)


@pytest.mark.parametrize(
    "digest",
    [GOOD + "\n", GOOD + "\r\n", "\n" + GOOD, GOOD + " ", "sha256:" + "A" * 64, GOOD[:-1]],
)
def test_anything_around_or_in_it_is_refused(digest: str) -> None:
    with pytest.raises(FormatError):
        validate_digest(digest)
