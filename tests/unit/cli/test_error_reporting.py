"""Issue 13: exception groups become one of the project's errors, and an OSError with
no file says what the lazy filesystem knows."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from lazybuild.cli.main import _os_error_text, _user_error
from lazybuild.errors import NotFoundError, RegistryError, one_error, reported_error
from lazybuild.lazyfs.client import ReadFailure


def test_a_group_of_project_errors_is_reported_as_its_first() -> None:
    first = RegistryError("registry r: blob b: reading bytes 0-9 broke off (4 attempts)")
    group = ExceptionGroup("Exceptions from Trio nursery", [first, NotFoundError("gone")])
    nested = BaseExceptionGroup("outer", [group])
    assert _user_error(nested) is first
    assert reported_error(nested) is first


def test_a_group_holding_a_bug_keeps_its_traceback() -> None:
    group = ExceptionGroup("nursery", [RegistryError("x"), ValueError("a bug")])
    assert _user_error(group) is None


def test_one_error_unwraps_groups_of_project_errors_only() -> None:
    first = RegistryError("the first")
    with pytest.raises(RegistryError) as caught, one_error():
        raise ExceptionGroup("nursery", [first, RegistryError("the second")])
    assert caught.value is first
    with pytest.raises(ExceptionGroup), one_error():
        raise ExceptionGroup("nursery", [first, KeyError("bug")])


def test_an_os_error_without_a_file_says_what_the_lazy_filesystem_knows() -> None:
    error = OSError(errno.EIO, "Input/output error")
    failure = ReadFailure("sha256:" + "c" * 64, "/etc/passwd", "cannot reach registry r")
    filesystem = SimpleNamespace(read_failures=(failure,))
    text = _os_error_text(error, filesystem)  # type: ignore[arg-type]
    assert text == (
        "Input/output error (the lazy filesystem: reading /etc/passwd of layer "
        f"sha256:{'c' * 64} failed: cannot reach registry r)"
    )
    assert _os_error_text(error) == "Input/output error (EIO, no file named)"
    named = OSError(errno.EIO, "Input/output error", "/mnt/x/usr/bin/python3")
    assert _os_error_text(named) == "Input/output error: /mnt/x/usr/bin/python3"
