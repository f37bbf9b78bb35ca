"""The pure parts of the runc runner: exit codes, runc's log, cgroup path, rlimits."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import pytest
import trio

from lazybuild.executor import limits
from lazybuild.executor.errors import ContainerError
from lazybuild.executor.runc import (
    RunResult,
    _result,
    _runc_error,
    _with_cgroup_path,
    run_container,
)


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        (0, RunResult(0, None)),
        (3, RunResult(3, None)),
        (128, RunResult(128, None)),
        (137, RunResult(137, 9)),
        (143, RunResult(143, 15)),
        (-9, RunResult(137, 9)),  # runc itself killed
        (255, RunResult(255, None)),
    ],
)
def test_exit_codes(returncode: int, expected: RunResult) -> None:
    assert _result(returncode) == expected


def test_runc_error_is_the_last_error_line(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    entries: list[Any] = [
        {"level": "warning", "msg": "cgroup v1 is deprecated"},
        {"level": "error", "msg": 'exec: "nope": executable file not found in $PATH'},
    ]
    log.write_text("\n".join(json.dumps(e) for e in entries) + "\nnot json\n")
    assert _runc_error(log) == 'exec: "nope": executable file not found in $PATH'
    log.write_text(json.dumps(entries[0]))
    assert _runc_error(log) is None
    assert _runc_error(tmp_path / "absent") is None


def test_cgroup_path_defaults_to_lazybuild_parent_without_changing_input() -> None:
    spec: dict[str, Any] = {"linux": {"namespaces": []}}
    assert _with_cgroup_path(spec, "c1")["linux"]["cgroupsPath"] == "lazybuild/c1"
    assert "cgroupsPath" not in spec["linux"]
    spec["linux"]["cgroupsPath"] = "/mine"
    assert _with_cgroup_path(spec, "c1")["linux"]["cgroupsPath"] == "/mine"


def test_rlimits_capped_without_cap_sys_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "may_raise_hard_limits", lambda: False)
    _, our_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2**40}]}}
    (fitted,) = limits.fit_rlimits(spec)["process"]["rlimits"]
    if our_hard != resource.RLIM_INFINITY:
        assert fitted["hard"] == our_hard
    assert fitted["soft"] <= fitted["hard"]
    assert spec["process"]["rlimits"][0]["hard"] == 2**40  # the input is not changed


def test_rlimits_kept_with_cap_sys_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "may_raise_hard_limits", lambda: True)
    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2**40}]}}
    assert limits.fit_rlimits(spec) is spec


def test_invalid_container_id_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        await run_container(container_id="a/b", bundle_dir=tmp_path / "bundle", spec={})

    with pytest.raises(ContainerError, match="container id"):
        trio.run(run)
    assert not (tmp_path / "bundle").exists()
