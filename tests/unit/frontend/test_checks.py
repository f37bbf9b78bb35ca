"""Build checks: each rule on the Dockerfiles of its page in BuildKit's build-checks
reference (https://docs.docker.com/reference/build-checks/): the bad example fires it,
the good ones do not."""

from __future__ import annotations

import pytest

from lazybuild.errors import UsageError
from lazybuild.frontend.dockerfile.checks import (
    RULES,
    CheckConfig,
    check_dockerfile,
    parse_check_options,
    render_build_warnings,
    render_check,
)

# (rule, bad Dockerfile, expected message of its first finding, good Dockerfiles)
CASES: list[tuple[str, str, str, list[str]]] = [
    (
        "StageNameCasing",
        "FROM alpine AS BuilderBase\n",
        "Stage name 'BuilderBase' should be lowercase",
        ["FROM alpine AS builder-base\n"],
    ),
    (
        "FromAsCasing",
        "FROM debian:latest as builder\n",
        "'as' and 'FROM' keywords' casing do not match",
        ["FROM debian:latest AS deb-builder\n", "from debian:latest as deb-builder\n"],
    ),
    (
        "NoEmptyContinuation",
        "FROM alpine\nEXPOSE \\\n\n80\n",
        "Empty continuation line",
        ["FROM alpine\nEXPOSE \\\n# Port\n80\n", "FROM alpine\nRUN <<EOF\necho\n\nEOF\n"],
    ),
    (
        "ConsistentInstructionCasing",
        "FROM alpine\nRUN echo hello\ncopy Dockerfile /\n",
        "Command 'copy' should match the case of the command majority (uppercase)",
        [
            "FROM alpine\nRUN echo hello\nCOPY Dockerfile /\n",
            "from alpine\nrun echo hello\n",
            # Global ARGs are not counted (BuildKit counts the stages' instructions).
            "arg BASE=alpine\nFROM $BASE\nRUN true\n",
        ],
    ),
    (
        "DuplicateStageName",
        "FROM debian:latest AS builder\nRUN true\nFROM golang:latest AS builder\n",
        'Duplicate stage name "builder", stage names should be unique',
        ["FROM debian:latest AS deb-builder\nFROM golang:latest AS go-builder\n"],
    ),
    (
        "ReservedStageName",
        "FROM alpine AS scratch\n",
        'Stage name should not use the same name as reserved stage "scratch"',
        ["FROM alpine AS builder\n"],
    ),
    (
        "JSONArgsRecommended",
        "FROM alpine\nENTRYPOINT my-program start\n",
        "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related "
        "to OS signals",
        [
            'FROM alpine\nENTRYPOINT ["my-program", "start"]\n',
            'FROM alpine\nSHELL ["/bin/bash", "-c"]\nENTRYPOINT echo "$HOME"\n',
        ],
    ),
    (
        "MaintainerDeprecated",
        "FROM alpine\nMAINTAINER moby@example.com\n",
        "Maintainer instruction is deprecated in favor of using label",
        ['FROM alpine\nLABEL org.opencontainers.image.authors="moby@example.com"\n'],
    ),
    (
        "UndefinedArgInFrom",
        "FROM node:22${VARIANT} AS jsbuilder\n",
        "FROM argument 'VARIANT' is not declared",
        [
            'ARG VARIANT="-alpine3.20"\nFROM node:22${VARIANT} AS jsbuilder\n',
            "FROM --platform=$BUILDPLATFORM alpine\n",
        ],
    ),
    (
        "WorkdirRelativePath",
        "FROM nginx AS web\nWORKDIR usr/share/nginx/html\nCOPY public .\n",
        'Relative workdir "usr/share/nginx/html" can have unexpected results if the base '
        "image changes",
        [
            "FROM nginx AS web\nWORKDIR /usr/share/nginx/html\nCOPY public .\n",
            "FROM nginx AS web\nWORKDIR /app\nWORKDIR src\n",
        ],
    ),
    (
        "UndefinedVar",
        "FROM scratch AS base\nCOPY $foo .\n",
        "Usage of undefined variable '$foo'",
        [
            "FROM scratch AS base\nARG foo\nCOPY $foo .\n",
            "FROM scratch\nENV PATH=$PATH:/app/bin\n",
            # A base image's environment is not known: not reported.
            "FROM python AS base\nARG VERSION=$PYTHON_VERSION\n",
            # The shell expands RUN's variables.
            "FROM scratch\nRUN echo $foo\n",
        ],
    ),
    (
        "MultipleInstructionsDisallowed",
        'FROM alpine\nENTRYPOINT ["echo", "Hello, Norway!"]\n'
        'ENTRYPOINT ["echo", "Hello, Sweden!"]\n',
        "Multiple ENTRYPOINT instructions should not be used in the same stage because only "
        "the last one will be used",
        [
            'FROM python:alpine\nHEALTHCHECK --interval=1s CMD ["curl", "-f", "http://x"]\n'
            'CMD ["python", "-m", "http.server"]\n',
            'FROM alpine\nCMD ["a"]\nFROM alpine\nCMD ["b"]\n',
        ],
    ),
    (
        "LegacyKeyValueFormat",
        "FROM alpine\nARG foo\nENV bar $foo\n",
        '"ENV key=value" should be used instead of legacy "ENV key value" format',
        ["FROM alpine\nARG foo\nENV bar=$foo\n", 'FROM alpine\nLABEL a="b c"\n'],
    ),
    (
        "SecretsUsedInArgOrEnv",
        "FROM alpine\nARG AWS_SECRET_ACCESS_KEY\n",
        'Do not use ARG or ENV instructions for sensitive data (ARG "AWS_SECRET_ACCESS_KEY")',
        [
            "FROM alpine\nARG PUBLIC_KEY\nENV GPG_KEY_FILE=x\nARG TOKEN_VERSION=1\n",
            # Only a stage's ARGs are looked at, as in BuildKit.
            "ARG GITHUB_TOKEN=x\nFROM alpine\n",
        ],
    ),
    (
        "InvalidDefaultArgInFrom",
        "ARG TAG\nFROM busybox:${TAG}\n",
        "Default value for ARG busybox:${TAG} results in empty or invalid base image name",
        [
            "ARG TAG=latest\nFROM busybox:${TAG}\n",
            "ARG VARIANT\nFROM busybox:stable${VARIANT}\n",
            "ARG TAG\nFROM alpine:${TAG:-3.14}\n",
            # The platform ARGs have this machine's values.
            "FROM alpine AS build_amd64\nFROM alpine AS build_arm64\nFROM build_${TARGETARCH}\n",
        ],
    ),
    (
        "FromPlatformFlagConstDisallowed",
        "FROM --platform=linux/amd64 alpine AS base\n",
        'FROM --platform flag should not use constant value "linux/amd64"',
        [
            "FROM alpine AS base\n",
            "FROM --platform=${BUILDPLATFORM} alpine AS base\n",
            "FROM --platform=linux/amd64 alpine AS build_amd64\n",
        ],
    ),
    (
        "RedundantTargetPlatform",
        "FROM --platform=$TARGETPLATFORM alpine AS builder\n",
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the "
        "default behavior",
        ["FROM alpine AS builder\n"],
    ),
    (
        "ExposeProtoCasing",
        "FROM alpine\nEXPOSE 80/TcP\n",
        "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase",
        ["FROM alpine\nEXPOSE 80/tcp 53/udp 8080\n"],
    ),
    (
        "ExposeInvalidFormat",
        "FROM alpine\nEXPOSE 127.0.0.1:80:80\n",
        "EXPOSE instruction should not define an IP address or host-port mapping, found "
        "'127.0.0.1:80:80'",
        ["FROM alpine\nEXPOSE 80\n"],
    ),
]


def _names(source: str) -> list[str]:
    return [finding.rule.name for finding in check_dockerfile(source).findings]


@pytest.mark.parametrize(("rule", "bad", "message", "good"), CASES, ids=[c[0] for c in CASES])
def test_rule_fires_on_the_bad_example_only(
    rule: str, bad: str, message: str, good: list[str]
) -> None:
    findings = [f for f in check_dockerfile(bad).findings if f.rule.name == rule]
    assert findings, f"{rule} did not fire on {bad!r}"
    assert findings[0].message == message
    for source in good:
        assert rule not in _names(source), source


def test_every_rule_has_a_case_and_a_docs_url() -> None:
    covered = {case[0] for case in CASES} | {"CopyIgnoredFile"}
    assert {rule.name for rule in RULES} == covered
    for rule in RULES:
        assert rule.url.startswith("https://docs.docker.com/go/dockerfile/rule/")


def test_a_clean_dockerfile_has_no_findings() -> None:
    source = (
        "ARG BASE=debian:bookworm\nFROM ${BASE} AS build\nWORKDIR /src\nCOPY . .\n"
        "RUN make\nFROM scratch\nCOPY --from=build /src/app /app\n"
        'ENTRYPOINT ["/app"]\n'
    )
    assert _names(source) == []


def test_multiple_instructions_points_at_the_ignored_one() -> None:
    (finding,) = [
        f
        for f in check_dockerfile('FROM a\nCMD ["1"]\nRUN x\nCMD ["2"]\n').findings
        if f.rule.name == "MultipleInstructionsDisallowed"
    ]
    assert finding.start_line == 2


def test_copy_ignored_file() -> None:
    source = "FROM scratch\nCOPY ./tmp/helloworld.txt /helloworld.txt\nCOPY ok.txt /\n"
    ignored = {"tmp/helloworld.txt"}.__contains__
    (finding,) = check_dockerfile(source, ignored=ignored).findings
    assert finding.rule.name == "CopyIgnoredFile"
    assert finding.message == (
        'Attempting to Copy file "tmp/helloworld.txt" that is excluded by .dockerignore'
    )
    assert check_dockerfile(source).findings == []  # no .dockerignore


def test_skip_error_and_experimental_directives() -> None:
    source = "FROM alpine as base\nCMD echo hi\n"
    assert _names(source) == ["FromAsCasing", "JSONArgsRecommended"]
    assert _names("# check=skip=all\n" + source) == []
    assert _names("# check=skip=FromAsCasing\n" + source) == ["JSONArgsRecommended"]
    report = check_dockerfile("# check=skip=JSONArgsRecommended;error=true\n" + source)
    assert report.violation == "lint violation found for rules: FromAsCasing"
    assert check_dockerfile(source).violation is None
    # The build arg overrides the directive, as in BuildKit.
    overridden = check_dockerfile(
        "# check=skip=all\n" + source, build_args={"BUILDKIT_DOCKERFILE_CHECK": "error=true"}
    )
    assert (
        overridden.violation == "lint violation found for rules: FromAsCasing, JSONArgsRecommended"
    )


def test_parse_check_options() -> None:
    assert parse_check_options("skip=A, B ;error=TRUE;experimental=all") == CheckConfig(
        skip=frozenset({"A", "B"}), error=True, experimental_all=True
    )
    with pytest.raises(UsageError, match="invalid check option"):
        parse_check_options("skip")
    with pytest.raises(UsageError, match="invalid check option"):
        parse_check_options("nope=1")
    with pytest.raises(UsageError):
        parse_check_options("error=maybe")


def test_a_dockerfile_that_does_not_parse_is_the_reports_error() -> None:
    report = check_dockerfile("FROM alpine\nFOO bar\n")
    assert report.error is not None
    assert report.error[1] == 2


def test_render_as_buildx() -> None:
    report = check_dockerfile("FROM alpine\nCMD echo hi\n")
    assert render_check(report) == (
        "Check complete, 1 warning has been found!\n"
        "\n"
        "WARNING: JSONArgsRecommended - "
        "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n"
        "JSON arguments recommended for CMD to prevent unintended behavior related to OS "
        "signals\n"
        "Dockerfile:2\n"
        "--------------------\n"
        "   1 |     FROM alpine\n"
        "   2 | >>> CMD echo hi\n"
        "   3 |     \n"
        "--------------------\n"
    )
    assert render_build_warnings(report.findings) == (
        " 1 warning found:\n"
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
        "behavior related to OS signals (line 2)"
    )
    assert render_check(check_dockerfile("FROM alpine\n")) == "Check complete, no warnings found.\n"


def test_a_check_comment_above_an_instruction_applies_to_it_only() -> None:
    # From BuildKit's testSecretsUsedInArgOrEnv: the comment skips a rule for the next
    # instruction; "// ..." is a remark; an empty "#" line drops the comments before it.
    source = (
        "FROM scratch\n"
        "# check=skip=SecretsUsedInArgOrEnv // allow secret in environment\n"
        "ENV password=bar\n"
        "# check=skip=all // is local to only this instruction\n"
        "ARG alternate_password\n"
        "ENV db_password=bar\n"
        "# check=skip=all\n"
        "#\n"
        "ENV token=1\n"
        "# check=skip=all\n"
        "MAINTAINER me\n"  # found while parsing: only the file's directive applies
    )
    findings = check_dockerfile(source).findings
    assert [(f.rule.name, f.start_line) for f in findings] == [
        ("SecretsUsedInArgOrEnv", 6),
        ("SecretsUsedInArgOrEnv", 9),
        ("MaintainerDeprecated", 11),
    ]
