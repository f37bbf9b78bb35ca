"""One build's share of a filesystem process that several builds use (the daemon's)."""

from __future__ import annotations

from lazybuild.lazyfs.client import FetchReport, LayerFetch, ReadFailure


def _fetch(digest: str, fetched: int, requests: int) -> LayerFetch:
    return LayerFetch(digest, "lazy", 1000, fetched, requests, requests // 2, fetched / 100)


def test_a_builds_share_of_a_shared_process_is_what_it_added_over_its_layers() -> None:
    old_failure = ReadFailure("sha256:aa", "/old", "boom")
    new_failure = ReadFailure("sha256:aa", "/new", "boom")
    other_failure = ReadFailure("sha256:cc", "/x", "boom")
    before = FetchReport((_fetch("sha256:aa", 300, 4), _fetch("sha256:cc", 50, 1)), (old_failure,))
    now = FetchReport(
        (_fetch("sha256:aa", 500, 10), _fetch("sha256:bb", 70, 2), _fetch("sha256:cc", 90, 3)),
        (old_failure, new_failure, other_failure),
    )
    share = now.since(before, {"sha256:aa", "sha256:bb"})
    assert [(layer.digest, layer.bytes_fetched, layer.requests) for layer in share.layers] == [
        ("sha256:aa", 200, 6),
        ("sha256:bb", 70, 2),  # opened after the build began: all of it
    ]
    assert share.failures == (new_failure,)
    assert share.bytes_fetched == 270
