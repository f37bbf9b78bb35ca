"""RUN mounts decided without running anything: cache sub-paths and content keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazybuild.graph.ops import Exec, ExecMount, Input
from lazybuild.oci.descriptor import Descriptor
from lazybuild.worker.execmounts import (
    MountSetupError,
    _cache_subpath,
    content_keyed_inputs,
    remote_snapshot_key,
    subtree_digest,
)
from lazybuild.worker.layers import LocalLayer, RemoteLayer, Snapshot


def cache_mount(source_path: str = "/") -> ExecMount:
    return ExecMount(dest="/cache", kind="cache", cache_id="c", source_path=source_path)


def test_cache_source_is_a_directory_inside_the_cache(tmp_path: Path) -> None:
    (tmp_path / "sel").mkdir()
    assert _cache_subpath(tmp_path, cache_mount()) == tmp_path
    assert _cache_subpath(tmp_path, cache_mount("/sel")) == tmp_path / "sel"


def test_cache_source_missing_or_escaping_through_a_link_is_an_error(tmp_path: Path) -> None:
    # BuildKit's testCacheMountSourceEscape: a link to /etc resolves inside the cache.
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink("/etc", cache / "sel")
    with pytest.raises(MountSetupError, match="'/sel' is not a directory in the cache"):
        _cache_subpath(cache, cache_mount("/sel"))
    with pytest.raises(MountSetupError, match="'/none'"):
        _cache_subpath(cache, cache_mount("/none"))


def exec_op(*mounts: ExecMount, inputs: int = 3) -> Exec:
    return Exec(
        args=("true",),
        mounts=(ExecMount(input=0, dest="/"), *mounts),
        inputs=tuple(Input(digest=f"sha256:{i}") for i in range(inputs)),
    )


def test_readonly_binds_of_a_subdirectory_key_on_content() -> None:
    op = exec_op(
        ExecMount(input=1, dest="/a", source_path="/src", readonly=True),
        ExecMount(input=1, dest="/b", source_path="/lib", readonly=True),
        ExecMount(input=2, dest="/c", source_path="/", readonly=True),
    )
    assert content_keyed_inputs(op) == {1: ("/src", "/lib")}


def test_whole_or_output_uses_keep_the_inputs_key() -> None:
    op = exec_op(
        ExecMount(input=1, dest="/a", source_path="/src", readonly=True),
        ExecMount(input=1, dest="/b", source_path="/src", readonly=False, output=1),
        ExecMount(input=0, dest="/r", source_path="/src", readonly=True),
    )
    assert content_keyed_inputs(op) == {}


def test_writable_binds_whose_writes_are_discarded_key_on_content() -> None:
    # BuildKit's testMountRWCache: RUN --mount=from=build,src=out,target=/out,rw is keyed
    # on /out's content, so a change elsewhere in the stage leaves the step cached.
    op = exec_op(
        ExecMount(input=1, dest="/out", source_path="/out", readonly=False),
        ExecMount(input=2, dest="/all", source_path="/", readonly=False),
    )
    assert content_keyed_inputs(op) == {1: ("/out",)}


def test_subtree_digest_follows_content_not_times(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub/file").write_text("one")
    os.symlink("sub/file", tree / "link")
    first = subtree_digest(tree)
    os.utime(tree / "sub/file", (1, 1))
    assert subtree_digest(tree) == first
    (tree / "sub/file").write_text("two")
    changed = subtree_digest(tree)
    assert changed != first
    os.chmod(tree / "sub/file", 0o600)
    assert subtree_digest(tree) != changed
    assert subtree_digest(tmp_path / "none") == "missing"


def test_a_directory_of_remote_layers_is_keyed_by_their_digests_without_reading() -> None:
    """`--mount=from=IMAGE,src=/usr/local/go` must not fetch the toolchain to key it."""

    def remote(n: int) -> RemoteLayer:
        digest = f"sha256:{n:064x}"
        descriptor = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, 1)
        return RemoteLayer(descriptor, "registry.example/golang:1", digest)

    image = Snapshot((remote(1), remote(2)))
    key = remote_snapshot_key(image, ("/usr/local/go",))
    assert key is not None and key == remote_snapshot_key(image, ("/usr/local/go",))
    assert key != remote_snapshot_key(Snapshot((remote(1), remote(3))), ("/usr/local/go",))
    assert key != remote_snapshot_key(image, ("/usr",))
    built = Snapshot((remote(1), LocalLayer("x", Path("/nonexistent"))))
    assert remote_snapshot_key(built, ("/usr",)) is None  # made here: keyed by content
