"""A build's per-image fetch figures, whole-layer downloads under way counted in."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio

from lazybuild.imagebuild import driver
from lazybuild.lazyfs.client import FetchReport, LayerDownload, LayerFetch
from lazybuild.worker.rootfs import LayerMounter

LAZY = "sha256:" + "aa" * 32
WHOLE = "sha256:" + "bb" * 32
STRANGER = "sha256:" + "cc" * 32


def test_downloads_are_summed_per_image_of_this_build() -> None:
    mounter = LayerMounter(cast(Any, None), cast(Any, None), cast(Any, None))
    mounter._sources = {LAZY: "r.example/app", WHOLE: "r.example/app"}
    report = FetchReport(
        (),
        (),
        (LayerDownload(WHOLE, 5, 10, 1.0), LayerDownload(STRANGER, 1, 2, 1.0)),
    )
    # A download of another build's layer (a shared process) is not this build's.
    assert mounter.downloads_by_image(report) == {"r.example/app": (5, 10)}


class FakeMounter:
    def __init__(self) -> None:
        self.report = FetchReport(
            (LayerFetch(LAZY, "lazy", 100, 40, 1, 0, 0.1),),
            (),
            (LayerDownload(WHOLE, 30, 50, 2.0),),
        )

    async def fetch_report(self) -> FetchReport:
        return self.report

    async def fetch_by_image(self, report: FetchReport) -> dict[str, tuple[int, int]]:
        return {"r.example/app": (40, 100)}

    def downloads_by_image(self, report: FetchReport) -> dict[str, tuple[int, int]]:
        return {"r.example/app": (30, 50), "r.example/other": (1, 4)}


def test_the_display_hears_downloads_counted_in_and_given_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver, "_FETCH_POLL_SECONDS", 0.01)
    heard: list[tuple[str, int, int | None, tuple[int, int] | None]] = []

    def hook(image: str, fetched: int, size: int | None, downloading: Any) -> None:
        heard.append((image, fetched, size, downloading))

    async def main() -> None:
        with trio.move_on_after(0.015):
            await driver._report_fetches(cast(Any, FakeMounter()), hook)

    trio.run(main)
    assert heard[:2] == [
        ("r.example/app", 70, 150, (30, 50)),
        ("r.example/other", 1, 4, (1, 4)),
    ]
