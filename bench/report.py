"""Benchmark results as sections of docs/benchmarks.md, each replaced on re-run."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

HEADER = """# Benchmarks

Produced by `just bench` (`python -m bench [names...]`). Each section is rewritten
when its benchmark runs again. Every figure is measured against a peer tool in the
same run on the same machine; ratios are lazybuild / peer (below 1 means lazybuild
is faster or smaller).
"""


@dataclass
class Section:
    name: str
    title: str
    setup: list[str] = field(default_factory=list)  # markdown bullet lines
    table: list[list[str]] = field(default_factory=list)  # first row is the header
    notes: list[str] = field(default_factory=list)  # paragraphs

    def markdown(self) -> str:
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts = [f"## {self.title}", "", f"Run {when}.", "", "Setup:", "", *self.setup, ""]
        if self.table:
            header, *rows = self.table
            parts.append("| " + " | ".join(header) + " |")
            parts.append("|" + "|".join("---" for _ in header) + "|")
            parts += ["| " + " | ".join(row) + " |" for row in rows]
            parts.append("")
        for note in self.notes:
            parts += [note, ""]
        return "\n".join(parts)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def write_section(path: Path, section: Section) -> None:
    """Replace the section's previous text in `path`, or append it."""
    start, end = _markers(section.name)
    block = f"{start}\n{section.markdown().rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def seconds(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f} s"


def mebibytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / (1024 * 1024):.1f} MiB"


def data_size(value: int | None) -> str:
    """MiB, or KiB for small amounts (a warm run's few requests)."""
    if value is not None and value < 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return mebibytes(value)


def seconds_list(values: list[float], digits: int = 2) -> str:
    """Per-repetition times, e.g. ``1.20, 1.31 s``."""
    return ", ".join(f"{v:.{digits}f}" for v in values) + " s" if values else "none"


def verdict(what: str, value: float | None, goal: float) -> str:
    """A goal of ``value <= goal``, said in one line."""
    if value is None:
        return f"{what}: not measured, see failures."
    met = "**met**" if value <= goal else "**not met**"
    return f"{what}: {met} ({value:.2f})."
