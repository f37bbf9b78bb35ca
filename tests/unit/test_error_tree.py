"""docs/errors.md draws every exception class of the package under its real base.

Every module of ``lazybuild`` is imported (none needs root or a FUSE mount to import;
one that fails to import fails this test), every ``BaseException`` subclass defined in
the package is found, and each must appear in the tree of docs/errors.md, in its
module, under its base class. A class that is not a ``LazybuildError`` must say what it
is instead (``[frontend]``, ``[protocol]`` or ``[internal]``).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import lazybuild
from lazybuild.errors import LazybuildError

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
PACKAGE_DIR = Path(lazybuild.__file__).parent
# ``python -m lazybuild`` runs the command line when imported; its source is checked
# for class definitions instead.
RUNS_ON_IMPORT = {"lazybuild.__main__"}
KINDS = ("[frontend]", "[protocol]", "[internal]")
_BRANCH = re.compile(r"^((?:│   |    )*)(?:├── |└── )")


@dataclass(frozen=True)
class Node:
    name: str
    module: str | None  # without "lazybuild."; None for a builtin root or base
    meaning: str
    parent: str | None


def parse_tree(text: str) -> list[Node]:
    """The tree lines of every ``text`` block: ``NAME  MODULE  MEANING`` under a prefix
    of ``│   ``/``    `` per level and a branch; a line without a prefix is a root."""
    nodes: list[Node] = []
    in_block = False
    stack: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```text" if not in_block else False
            stack = []
            continue
        if not in_block or not line.strip():
            continue
        match = _BRANCH.match(line)
        if match is None:
            depth, rest = 0, line
        else:
            depth, rest = len(match.group(1)) // 4 + 1, line[match.end() :]
        fields = re.split(r"\s{2,}", rest.strip(), maxsplit=2)
        assert depth <= len(stack), f"a line deeper than its parent: {line!r}"
        del stack[depth:]
        parent = stack[-1] if stack else None
        module = fields[1] if len(fields) > 1 else None
        meaning = fields[2] if len(fields) > 2 else ""
        nodes.append(Node(fields[0], module, meaning, parent))
        stack.append(fields[0])
    return nodes


def import_all() -> list[str]:
    names = ["lazybuild"]
    for info in pkgutil.walk_packages(lazybuild.__path__, "lazybuild."):
        names.append(info.name)
        if info.name not in RUNS_ON_IMPORT:
            importlib.import_module(info.name)
    return names


def subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    pending = [cls]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                pending.append(sub)
    return found


def package_errors() -> list[type[BaseException]]:
    import_all()
    ours = [
        cls
        for cls in subclasses(BaseException)
        if cls.__module__ == "lazybuild" or cls.__module__.startswith("lazybuild.")
    ]
    return sorted(ours, key=lambda cls: (cls.__module__, cls.__qualname__))


def short_module(module: str) -> str:
    return module.removeprefix("lazybuild.")


def test_every_module_is_imported() -> None:
    names = import_all()
    files = {
        path.relative_to(PACKAGE_DIR.parent).with_suffix("").as_posix().replace("/", ".")
        for path in PACKAGE_DIR.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    modules = {name.removesuffix(".__init__") for name in files}
    assert modules - set(names) == set(), "modules pkgutil did not find"
    for name in RUNS_ON_IMPORT:
        source = (PACKAGE_DIR.parent / (name.replace(".", "/") + ".py")).read_text()
        classes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]
        assert classes == [], f"{name} defines classes but is not imported here"


def test_every_error_class_is_in_the_tree_under_its_base() -> None:
    nodes = parse_tree(DOC.read_text())
    by_name: dict[str, list[Node]] = {}
    for node in nodes:
        by_name.setdefault(node.name, []).append(node)
    errors = package_errors()
    assert len(errors) > 50  # the walk found the package's errors at all
    missing, misplaced = [], []
    for cls in errors:
        where = f"{cls.__module__}.{cls.__qualname__}"
        here = [n for n in by_name.get(cls.__qualname__, []) if n.module is not None]
        if len(here) != 1:
            missing.append(f"{where} ({len(here)} lines)")
            continue
        (node,) = here
        (base,) = cls.__bases__
        if node.module != short_module(cls.__module__) or node.parent != base.__qualname__:
            misplaced.append(
                f"{where} (base {base.__qualname__}): drawn in {node.module} under {node.parent}"
            )
        if not node.meaning:
            misplaced.append(f"{where}: no meaning given")
        if not issubclass(cls, LazybuildError) and not node.meaning.startswith(KINDS):
            misplaced.append(f"{where}: not a LazybuildError, and not marked {KINDS}")
    assert missing == [], "error classes missing from docs/errors.md"
    assert misplaced == [], "error classes drawn in the wrong place"


def test_every_tree_line_is_a_real_class() -> None:
    nodes = parse_tree(DOC.read_text())
    known = {(short_module(c.__module__), c.__qualname__) for c in package_errors()}
    stale = [
        f"{n.module}.{n.name}"
        for n in nodes
        if n.module is not None and (n.module, n.name) not in known
    ]
    assert stale == [], "lines of docs/errors.md that name no class of the package"
    for node in nodes:
        if node.module is None:  # a builtin base, under its own base
            cls = getattr(builtins, node.name, None)
            assert isinstance(cls, type) and issubclass(cls, BaseException), node.name
            if node.parent is not None:
                assert getattr(builtins, node.parent) in cls.__bases__, node.name


def test_parse_tree_reads_depths() -> None:
    text = "```text\nA\n├── B  m  b\n│   └── C  m  c\n└── D  m  d\n```\n"
    assert parse_tree(text) == [
        Node("A", None, "", None),
        Node("B", "m", "b", "A"),
        Node("C", "m", "c", "B"),
        Node("D", "m", "d", "A"),
    ]
