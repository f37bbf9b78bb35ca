"""Mount points runc creates are found before and removed after a run."""

from __future__ import annotations

from pathlib import Path

from lazybuild.executor.mountstubs import missing_mount_points, remove_mount_stubs


def test_only_missing_destinations_top_most_component(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("old\n")
    stubs = missing_mount_points(
        tmp_path, ["/etc/hostname", "/etc/hosts", "/run/secrets/a", "/run/secrets/b"]
    )
    assert stubs == [tmp_path / "etc" / "hosts", tmp_path / "run"]


def test_removes_only_empty_stubs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    stubs = missing_mount_points(tmp_path, ["/etc/hosts", "/run/secrets/a", "/data"])
    (tmp_path / "etc" / "hosts").write_text("")  # what runc leaves: an empty file
    (tmp_path / "run" / "secrets").mkdir(parents=True)
    (tmp_path / "run" / "secrets" / "a").write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "written-by-the-run").write_text("keep me")
    remove_mount_stubs(stubs)
    assert not (tmp_path / "etc" / "hosts").exists()
    assert (tmp_path / "etc").is_dir()
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "data" / "written-by-the-run").read_text() == "keep me"


def test_stub_never_created_is_fine(tmp_path: Path) -> None:
    remove_mount_stubs(missing_mount_points(tmp_path, ["/proc"]))
    assert list(tmp_path.iterdir()) == []
