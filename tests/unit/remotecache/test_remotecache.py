"""The remote build cache's pieces without a registry: flag values, the cache document
(as hostile input too), the stores, and what each export mode takes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazybuild.errors import FormatError, UsageError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.remotecache.document import CachedLayer, CacheDocument, CacheEntry
from lazybuild.remotecache.records import (
    ImportedCacheStore,
    ObservedCacheStore,
    select_for_export,
)
from lazybuild.remotecache.spec import cache_exports, cache_imports
from lazybuild.solver.cachestore import CacheLink, CacheRecord, MemoryCacheStore
from lazybuild.worker.layers import LocalLayer, RemoteLayer, Snapshot

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64
K1, K2, K3 = ("sha256:" + c * 64 for c in "123")


def _descriptor(digest: str = D) -> Descriptor:
    return Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, 10)


def test_flag_values_as_buildx_spells_them() -> None:
    (export,) = cache_exports(["type=registry,ref=reg.example/app:cache,mode=max"])
    assert str(export.ref) == "reg.example/app:cache" and export.mode == "max"
    assert not export.cache_mounts
    assert cache_exports(["ref=reg.example/app:c,cache-mounts=true"])[0].cache_mounts
    assert cache_exports(["ref=reg.example/app:cache"])[0].mode == "min"
    assert [str(i.ref) for i in cache_imports(["reg.example/a:x", "ref=reg.example/b:y"])] == [
        "reg.example/a:x",
        "reg.example/b:y",
    ]


def test_cache_mounts_are_chosen_by_id_in_one_quoted_csv_field() -> None:
    """buildx reads these values as CSV: a list is one quoted field."""
    (export,) = cache_exports(['type=registry,ref=r.example/a:c,"cache-mounts=go-build, go-mod"'])
    assert export.cache_mount_ids == frozenset({"go-build", "go-mod"})
    assert export.exports_mount("go-build") and not export.exports_mount("apt")
    (everything,) = cache_exports(["ref=r.example/a:c,cache-mounts=TRUE"])
    assert everything.cache_mount_ids is None and everything.exports_mount("apt")
    (single,) = cache_exports(["ref=r.example/a:c,cache-mounts=/root/.cache"])
    assert single.exports_mount("/root/.cache") and not single.exports_mount("go-build")
    (none,) = cache_exports(["ref=r.example/a:c"])
    assert not none.exports_mount("go-build")
    assert none.cache_mount_layers == 8
    assert cache_exports(["ref=r.example/a:c,cache-mount-layers=3"])[0].cache_mount_layers == 3


@pytest.mark.parametrize(
    ("flag", "spec", "says"),
    [
        ("to", "type=registry,ref=r.example/a:c,mode=all", "mode must be min or max"),
        ("to", 'ref=r.example/a:c,"cache-mounts= , "', "true, false or mount ids"),
        ("to", "ref=r.example/a:c,cache-mount-layers=0", "cache-mount-layers must be"),
        ("to", "type=s3,bucket=x", "not supported"),
        ("to", "type=local", "needs dest=DIR"),
        ("from", "type=local,dest=/x", "unknown key 'dest'"),
        ("to", "type=registry", "no ref="),
        ("to", "ref=r.example/a@sha256:" + "a" * 64, "not a digest"),
        ("from", "type=registry,ref=r.example/a:c,colour=red", "unknown key 'colour'"),
        ("from", "type=registry,ref", "is not KEY=VALUE"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(flag: str, spec: str, says: str) -> None:
    parse = cache_exports if flag == "to" else cache_imports
    with pytest.raises(UsageError, match=says) as raised:
        parse([spec])
    assert "\n" not in str(raised.value)


def test_the_document_round_trips() -> None:
    document = CacheDocument(
        (
            CachedLayer(_descriptor(), E, "r.example/debian@" + D),
            CachedLayer(_descriptor(E), D),
        ),
        (CacheEntry(K1, (0,), 1.5), CacheEntry(K2, (0, 1), 2.0), CacheEntry(K3, (), 3.0)),
        {"c" * 64: (("usr/bin/go",), ())},
        {"d" * 32: (1,)},
    )
    assert CacheDocument.decode(document.encode(), "test") == document


@pytest.mark.parametrize(
    "document",
    [
        {"version": 2, "layers": [], "records": []},
        {"version": 1, "layers": {}, "records": []},
        {"version": 1, "layers": [], "records": [{"key": "nope", "layers": [], "created": 1}]},
        {"version": 1, "layers": [], "records": [{"key": K1, "layers": [0], "created": 1}]},
        {"version": 1, "layers": [], "records": [{"key": K1, "layers": [True], "created": 1}]},
        {"version": 1, "layers": [], "records": [{"key": K1, "layers": [], "created": "x"}]},
        {
            "version": 1,
            "layers": [{"descriptor": _descriptor().to_json(), "diff_id": E, "source": "r/x:1"}],
            "records": [],
        },
        {"version": 1, "layers": [{"descriptor": {}, "diff_id": E}], "records": []},
        {"version": 1, "layers": [], "records": [], "mounts": {"../x": []}},
        {
            # A local path as a layer's source: a cache never points this machine at files.
            "version": 1,
            "layers": [
                {
                    "descriptor": _descriptor().to_json(),
                    "diff_id": E,
                    "source": "oci-layout:/etc@" + D,
                }
            ],
            "records": [],
        },
        {"version": 1, "layers": [], "records": [], "mounts": {"a" * 32: [0]}},
        {"version": 1, "layers": [], "records": [], "learned": {"a" * 64: [["x"], [7]]}},
        {"version": 1, "layers": [], "records": [], "learned": {"nope": []}},
    ],
)
def test_a_malformed_document_is_a_format_error(document: object) -> None:
    with pytest.raises(FormatError):
        CacheDocument.decode(json.dumps(document).encode(), "cache r/x:c")


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_fail_as_format_errors(data: bytes) -> None:
    with contextlib.suppress(FormatError):  # anything else escapes: a defect
        CacheDocument.decode(data, "fuzz")


def test_local_records_come_before_imported_ones_and_saves_stay_local() -> None:
    local = MemoryCacheStore()
    local.save(K1, CacheRecord("local", 1.0))
    store = ImportedCacheStore(local, {K1: CacheRecord("remote", 0.5), K2: CacheRecord("r2", 0.5)})
    assert store.load(K1) == CacheRecord("local", 1.0)
    assert store.load(K2) == CacheRecord("r2", 0.5)
    store.save(K3, CacheRecord("new", 2.0))
    assert local.load(K3) == CacheRecord("new", 2.0)
    assert store.load("sha256:" + "9" * 64) is None


def test_observed_records_include_what_they_were_derived_from_and_modes_select() -> None:
    base = RemoteLayer(_descriptor(), "r.example/debian@" + D, E)
    step = LocalLayer("step", Path("/nonexistent"))
    other = LocalLayer("other-stage", Path("/nonexistent"))
    result = Snapshot((base, step))
    inner = MemoryCacheStore()
    inner.save(K1, CacheRecord(Snapshot((base,)).id, 1.0))
    inner.save(K2, CacheRecord(result.id, 2.0), [CacheLink(0, "", K1)])
    inner.save(K3, CacheRecord(Snapshot((base, other)).id, 1.5), [CacheLink(0, "", K1)])
    observed = ObservedCacheStore(inner)
    assert observed.load(K2) is not None  # a cached build loads its last step only
    observed.load(K3)
    touched = observed.touched_records()
    assert [entry.key for entry in touched] == [K1, K3, K2]  # oldest first
    assert {e.key for e in select_for_export(touched, "max", result)} == {K1, K2, K3}
    assert {e.key for e in select_for_export(touched, "min", result)} == {K1, K2}


def test_a_layer_from_a_cache_keeps_that_through_its_snapshot_id() -> None:
    layer = RemoteLayer(_descriptor(), "r.example/app@" + D, E, from_cache=True)
    assert Snapshot.from_id(Snapshot((layer,)).id).layers == (layer,)
    plain = RemoteLayer(_descriptor(), "r.example/app@" + D, E)
    assert "from_cache" not in Snapshot((plain,)).id  # ids of existing records unchanged
