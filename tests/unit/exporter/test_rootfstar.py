"""type=tar (and -o -): the tar holds what type=local copies, entry for entry, in
BuildKit's naming (no ``./``, directories with a trailing ``/``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lazybuild.errors import UsageError
from lazybuild.exporter.rootfstar import write_rootfs_tar, write_rootfs_tar_to
from tests.support.trees import directory_tree, tar_tree
from tests.unit.exporter.test_rootfscopy import tree  # noqa: F401 (the shared fixture)


def test_tar_holds_what_the_directory_holds(tree: Path) -> None:  # noqa: F811
    out = io.BytesIO()
    write_rootfs_tar(tree, out)
    out.seek(0)
    assert tar_tree(out) == directory_tree(tree)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        names = archive.getnames()
    assert names == sorted(names, key=lambda name: name.split("/"))
    assert "etc" in names and not any(name.startswith("./") for name in names)
    out.seek(0)
    again = io.BytesIO()
    write_rootfs_tar(tree, again)
    assert again.getvalue() == out.getvalue()  # same tree, same bytes


def test_tar_file_appears_only_complete(tree: Path, tmp_path: Path) -> None:  # noqa: F811
    dest = tmp_path / "sub" / "root.tar"
    stats = write_rootfs_tar_to(tree, str(dest))
    assert stats.entries > 5 and dest.is_file()
    assert [p.name for p in dest.parent.iterdir()] == ["root.tar"]
    with pytest.raises(UsageError, match="is a directory"):
        write_rootfs_tar_to(tree, str(tmp_path))
