"""docs/architecture.md's "Where things live" table and the tree agree.

Every entry of ``lazybuild/`` (package, top-level module or file) has one row, in
``sorted`` order, and no row names a deeper path: a package's details belong on its
own page. Every row's path exists, and every page the document points to exists.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
# A package's row is a few lines; more goes on its own page (docs/lazyfs.md's way).
MAX_ROW_CHARS = 600
_ROW = re.compile(r"^\| `([^`]+)` \| (.+) \|$")


def table_rows(text: str) -> list[tuple[str, str]]:
    """(path, responsibility) of each row of the "Where things live" table."""
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def package_entries() -> list[str]:
    """``lazybuild/``'s entries as rows name them: directories with a trailing ``/``."""
    names = []
    for entry in (ROOT / "lazybuild").iterdir():
        if entry.name == "__pycache__":
            continue
        names.append(entry.name + "/" if entry.is_dir() else entry.name)
    return sorted(names)


def test_every_entry_of_the_package_has_one_row_in_order() -> None:
    rows = [path for path, _ in table_rows(DOC.read_text())]
    ours = [path.removeprefix("lazybuild/") for path in rows if path.startswith("lazybuild/")]
    entries = package_entries()
    assert sorted(set(entries) - set(ours)) == [], "entries of lazybuild/ without a row"
    assert sorted(set(ours) - set(entries)) == [], "rows that are no entry of lazybuild/"
    assert ours == entries, "rows out of sorted order, or a row twice"


def test_every_row_names_a_path_that_exists() -> None:
    rows = table_rows(DOC.read_text())
    assert len(rows) > 20
    for path, _ in rows:
        target = ROOT / path
        if path.endswith("/"):
            assert target.is_dir(), path
        else:
            assert target.exists(), path


def test_package_rows_are_short() -> None:
    long = [
        path
        for path, text in table_rows(DOC.read_text())
        if path.startswith("lazybuild/") and len(text) > MAX_ROW_CHARS
    ]
    assert long == [], f"rows over {MAX_ROW_CHARS} characters: move details to a page"


def test_pages_the_document_points_to_exist() -> None:
    pages = set(re.findall(r"docs/[\w.-]+\.md", DOC.read_text()))
    assert pages
    assert sorted(page for page in pages if not (ROOT / page).is_file()) == []
