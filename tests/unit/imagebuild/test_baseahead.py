"""The base image a build mounts first, guessed from its Dockerfile to open it ahead."""

from __future__ import annotations

import pytest

from lazybuild.imagebuild.baseahead import first_base_image


@pytest.mark.parametrize(
    ("dockerfile", "build_args", "expected"),
    [
        ("FROM golang:1.19\nRUN go version\n", {}, "golang:1.19"),
        ("# comment\nFROM --platform=$BUILDPLATFORM r.example/go AS b\n", {}, "r.example/go"),
        ("FROM --platform=linux/amd64 r.example/go AS build\n", {}, "r.example/go"),
        ("ARG BUILDER\nFROM ${BUILDER} AS build\nFROM scratch\n", {"BUILDER": "r/b:1"}, "r/b:1"),
        ("ARG BUILDER=r/default:1\nFROM $BUILDER\n", {}, "r/default:1"),
        ("ARG BUILDER=r/default:1\nFROM $BUILDER\n", {"BUILDER": "r/given:2"}, "r/given:2"),
        ("ARG BUILDER\nFROM ${BUILDER}\n", {}, None),  # nothing to expand it to
        ("FROM ${V:-r/fallback:3}\n", {}, "r/fallback:3"),
        ("FROM scratch\nCOPY a /a\nFROM debian:12\n", {}, "debian:12"),
        ("FROM debian AS base\nFROM base\n", {}, "debian"),
        ("FROM scratch AS base\nFROM base\n", {}, None),  # a stage, not an image
        ("# syntax=gomodule\nFROM debian\n", {}, None),  # another frontend's file
        ("FROM \\\n  debian:12 \\\n  AS build\n", {}, "debian:12"),
        ("RUN true\n", {}, None),
        ("FROM\n", {}, None),
    ],
)
def test_first_base_image(
    dockerfile: str, build_args: dict[str, str], expected: str | None
) -> None:
    assert first_base_image(dockerfile.encode(), build_args) == expected


def test_bytes_that_are_not_text_give_none() -> None:
    assert first_base_image(b"FROM \xff\xfe\n", {}) is None
