"""``build --check`` / ``--call=check`` from the command line: no daemon, no build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazybuild.cli.check_commands import CallFunction, parse_call
from lazybuild.cli.main import main
from lazybuild.errors import UsageError


def _context(tmp_path: Path, dockerfile: str, ignore: str | None = None) -> Path:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    if ignore is not None:
        (tmp_path / ".dockerignore").write_text(ignore)
    return tmp_path


def test_check_prints_findings_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = _context(tmp_path, "FROM alpine as base\nCMD echo hi\n")
    # A builder that does not exist: --check never contacts it.
    code = main(["build", "--check", "--builder", "unix:///nonexistent.sock", str(context)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("Check complete, 2 warnings have been found!\n")
    assert (
        "WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/" in out
    )
    assert " 2 | >>> CMD echo hi" in out


def test_check_without_findings_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = _context(tmp_path, 'FROM alpine\nCMD ["hi"]\n')
    assert main(["build", "--call=check", str(context)]) == 0
    assert capsys.readouterr().out == "Check complete, no warnings found.\n"


def test_check_json_and_ignorestatus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = _context(tmp_path, "FROM alpine\nCMD hi\n")
    assert main(["build", "--call=check,format=json,ignorestatus=true", str(context)]) == 0
    document = json.loads(capsys.readouterr().out)
    (warning,) = document["warnings"]
    assert warning["ruleName"] == "JSONArgsRecommended"
    assert warning["location"]["ranges"][0]["start"]["line"] == 2


def test_error_true_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = _context(tmp_path, "# check=error=true\nFROM alpine as base\n")
    assert main(["build", "--check", str(context)]) == 1
    assert capsys.readouterr().err == (
        "lazybuild: error: lint violation found for rules: FromAsCasing\n"
    )


def test_copy_ignored_file_reads_dockerignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = _context(tmp_path, "FROM scratch\nCOPY secret.txt /\n", ignore="*.txt\n")
    assert main(["build", "--check", str(context)]) == 1
    assert 'Attempting to Copy file "secret.txt" that is excluded' in capsys.readouterr().out
    # Exceptions make the answer depend on more than one pattern: BuildKit does not check.
    (tmp_path / ".dockerignore").write_text("*.txt\n!keep.txt\n")
    assert main(["build", "--check", str(context)]) == 0


def test_parse_call() -> None:
    assert parse_call("build") is None
    assert parse_call("check") == CallFunction("check")
    assert parse_call("check,format=json,ignorestatus=1") == CallFunction(
        "check", "json", ignore_status=True
    )
    with pytest.raises(UsageError, match="not supported"):
        parse_call("outline")
    with pytest.raises(UsageError, match="invalid print field"):
        parse_call("check,colour=red")
