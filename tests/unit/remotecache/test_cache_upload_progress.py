"""--cache-to type=registry says long uploads as a build's push does: in the display's lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import trio

from lazybuild.estargz.writer import WriterOptions
from lazybuild.progress import transfer
from lazybuild.remotecache.registrycache import export_cache
from lazybuild.remotecache.spec import cache_exports
from lazybuild.worker.layerstore import LayerStore
from tests.unit.exporter.helpers import FakeRegistry, ReportingRegistry


def _export(tmp_path: Path, registry: FakeRegistry) -> list[str]:
    (export,) = cache_exports(["type=registry,ref=r.example/cache:1"])
    lines: list[str] = []
    trio.run(
        lambda: export_cache(
            [],
            export,
            store=LayerStore(tmp_path),
            registry=cast(Any, registry),
            writer_options=WriterOptions(),
            prioritized=None,
            source_date_epoch=None,
            progress=lines.append,
        )
    )
    return lines


def test_long_cache_uploads_are_said_in_the_display_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)  # every upload counts as long
    lines = _export(tmp_path, ReportingRegistry())
    assert any(" pushed " in line for line in lines)  # the cache document, uploaded
    assert lines[-1].startswith("cache exported to ")
    assert transfer.active() is None


def test_a_board_the_command_installed_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)
    said: list[str] = []
    with transfer.reporting(transfer.LineReport(said.append)):
        lines = _export(tmp_path, ReportingRegistry())
    assert not any(" pushed " in line for line in lines)
    assert any(" pushed " in line for line in said)
