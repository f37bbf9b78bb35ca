"""``# syntax=`` and ``BUILDKIT_SYNTAX`` choose the frontend; docker/dockerfile names are
the built-in one; an installed entry point is found by name; anything else is one line."""

from __future__ import annotations

import pytest

from lazybuild.frontend.dockerfile.parser import ParseError
from lazybuild.gateway.selection import (
    UnknownFrontendError,
    is_dockerfile_syntax,
    select_frontend,
    syntax_of,
)


def test_the_directive_names_the_frontend_even_in_a_file_that_is_not_a_dockerfile() -> None:
    toml = b'# syntax=gomodule\nbuilder = "golang:bookworm"\n'
    assert syntax_of(toml, "build.toml", {}) == "gomodule"
    assert syntax_of(b"# syntax = docker/dockerfile:1\nFROM x\n", "Dockerfile", {}) == (
        "docker/dockerfile:1"
    )


def test_no_directive_or_a_directive_after_the_first_instruction_names_nothing() -> None:
    assert syntax_of(b"FROM x\n# syntax=gomodule\n", "Dockerfile", {}) is None
    assert syntax_of(b"# a comment\n# syntax=gomodule\nFROM x\n", "Dockerfile", {}) is None
    assert syntax_of(b"", "Dockerfile", {}) is None


def test_the_build_arg_overrides_the_directive() -> None:
    source = b"# syntax=gomodule\nFROM x\n"
    assert syntax_of(source, "Dockerfile", {"BUILDKIT_SYNTAX": "other"}) == "other"
    assert syntax_of(source, "Dockerfile", {"BUILDKIT_SYNTAX": ""}) == "gomodule"


def test_a_repeated_directive_is_the_parsers_error() -> None:
    with pytest.raises(ParseError, match="only one syntax parser directive"):
        syntax_of(b"# syntax=a\n# syntax=b\n", "Dockerfile", {})


@pytest.mark.parametrize(
    "name",
    [
        "docker/dockerfile",
        "docker/dockerfile:1",
        "docker/dockerfile:1.7-labs",
        "docker.io/docker/dockerfile:1",
        "docker/dockerfile-upstream:master",
        "docker/dockerfile@sha256:" + "a" * 64,
    ],
)
def test_docker_dockerfile_images_are_the_builtin_frontend(name: str) -> None:
    assert is_dockerfile_syntax(name)
    selected = select_frontend(name)
    assert selected.builtin and selected.name == "dockerfile"


@pytest.mark.parametrize("name", ["gomodule", "example.com/docker/dockerfile:1", "dockerfile"])
def test_other_names_are_not_the_dockerfile_images(name: str) -> None:
    assert not is_dockerfile_syntax(name)


def test_no_syntax_is_the_builtin_frontend() -> None:
    assert select_frontend(None).builtin


def test_an_installed_entry_point_is_found_by_name() -> None:
    # frontends/gomodule, installed into the venv by `just setup`.
    selected = select_frontend("gomodule")
    assert not selected.builtin
    assert selected.name == "gomodule"
    assert callable(selected.frontend)


@pytest.mark.parametrize(
    "name",
    [
        "registry.example:5000/frontends/gomodule:1",
        "example.com/docker/dockerfile:1",
        "frontends/gomodule",
        "gomodule@sha256:" + "b" * 64,
    ],
)
def test_an_image_reference_no_entry_point_has_is_a_frontend_image(name: str) -> None:
    selected = select_frontend(name)
    assert selected.image == name
    assert selected.frontend is None and not selected.builtin


def test_an_unknown_frontend_is_one_line_that_names_it_and_what_is_installed() -> None:
    with pytest.raises(UnknownFrontendError) as failure:
        select_frontend("no-such-frontend")
    message = str(failure.value)
    assert "\n" not in message
    assert "'no-such-frontend'" in message
    assert "gomodule" in message
