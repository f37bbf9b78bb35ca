"""Every command's ``--help`` is complete: each option says what it does, no argparse
placeholder (``CHUNK_SIZE``) stands in for a value's form, and the help ends with
examples."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from lazybuild.cli.main import build_parser

_SKIPPED = (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [("lazybuild", parser), *commands.choices.items()]


@pytest.mark.parametrize(("name", "parser"), _commands(), ids=lambda value: str(value)[:20])
def test_every_option_has_help_and_a_chosen_metavar(
    name: str, parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, _SKIPPED):
            continue
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, f"{what} has no help"
        takes_value = not action.option_strings or action.nargs != 0
        if takes_value and action.choices is None:
            assert action.metavar is not None, f"{what} shows argparse's placeholder"


@pytest.mark.parametrize(("name", "parser"), _commands(), ids=lambda value: str(value)[:20])
def test_every_command_ends_with_examples(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "\nexamples:\n" in text, f"{name} --help has no examples"
    examples = text.split("\nexamples:\n", 1)[1]
    commands = [
        line.strip() for line in examples.splitlines() if line.strip().startswith("lazybuild")
    ]
    assert 2 <= len(commands) <= 3, examples
    if name != "lazybuild":
        assert all(re.match(rf"lazybuild (-q )?{name}\b", c) for c in commands), commands
    # Each example parses (the positional image/context need not exist for that).
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])
