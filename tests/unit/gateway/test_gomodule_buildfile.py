"""The gomodule frontend's build file and go.mod reading (frontends/gomodule)."""

from __future__ import annotations

import pytest
from lazybuild_gomodule.buildfile import BuildFile, binary_name, module_path, parse_build_file

from lazybuild.gateway import FrontendError


def test_the_build_file_is_toml_after_its_syntax_line() -> None:
    source = b'# syntax=gomodule\nbuilder = "golang:bookworm"\npackage = "./cmd/app"\n'
    assert parse_build_file(source, "build.toml") == BuildFile("golang:bookworm", "./cmd/app")
    full = source + b'binary = "srv"\nargs = ["-serve", ":80"]\n'
    assert parse_build_file(full, "build.toml") == BuildFile(
        "golang:bookworm", "./cmd/app", "srv", ("-serve", ":80")
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (b"builder = ", "build.toml: not TOML"),
        (b"package = '.'\n", "builder (the golang image) is required"),
        (b'builder = "g"\nbuilders = 1\n', "unknown key 'builders'"),
        (b'builder = "g"\npackage = "-toolexec=x"\n', "package must be a Go package path"),
        (b'builder = "g"\nbinary = "../etc/passwd"\n', "binary must be a file name"),
        (b'builder = "g"\nargs = "x"\n', "args must be a list of strings"),
        (b"\xff", "not TOML"),
    ],
)
def test_a_bad_build_file_is_one_line_naming_it(source: bytes, reason: str) -> None:
    with pytest.raises(FrontendError) as failure:
        parse_build_file(source, "build.toml")
    assert reason in str(failure.value)
    assert str(failure.value).startswith("build.toml: ")


def test_the_module_path_and_the_binary_named_after_it() -> None:
    assert module_path(b"// a comment\nmodule example.com/goci // trailing\n\ngo 1.19\n") == (
        "example.com/goci"
    )
    assert module_path(b'module "example.com/quoted"\n') == "example.com/quoted"
    assert module_path(b"go 1.19\n") is None
    assert binary_name("example.com/goci") == "goci"
    assert binary_name("example.com/tool/v2") == "tool"
    assert binary_name("hello") == "hello"
