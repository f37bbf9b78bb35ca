"""Stable text/JSON renderings of the AST and the build plan, for golden tests and debugging."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lazybuild.frontend.dockerfile.instructions import Instruction
from lazybuild.frontend.dockerfile.parser import Dockerfile
from lazybuild.frontend.dockerfile.stages import BuildPlan

__all__ = ["dump_ast", "plan_to_json"]


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def dump_ast(dockerfile: Dockerfile) -> str:
    """One line per node (``START-END KEYWORD [flags] "args"``), heredocs indented below."""
    directives = dockerfile.directives
    lines = [
        f"directives escape={_quote(directives.escape)} syntax={_quote(directives.syntax or '')}"
        f" check={_quote(directives.check or '')}"
    ]
    for node in dockerfile.nodes:
        flags = " ".join(_quote(flag) for flag in node.flags)
        flags_part = f" [{flags}]" if flags else ""
        lines.append(
            f"{node.start_line}-{node.end_line} {node.keyword}{flags_part} {_quote(node.args)}"
        )
        for heredoc in node.heredocs:
            lines.append(
                f"    heredoc {_quote(heredoc.name)} expand={str(heredoc.expand).lower()}"
                f" chomp={str(heredoc.chomp).lower()} {_quote(heredoc.content)}"
            )
    return "\n".join(lines) + "\n"


def _to_json(value: Any) -> Any:
    if isinstance(value, Instruction):
        fields = {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"kind": value.keyword, **fields}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _to_json(item) for key, item in value.items()}
    return value


def plan_to_json(plan: BuildPlan) -> str:
    """The plan as indented JSON (every dataclass as an object, instructions with ``kind``)."""
    return json.dumps(_to_json(plan), indent=1, ensure_ascii=False) + "\n"
