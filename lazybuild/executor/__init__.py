"""Run processes in containers with runc (buildkit's executor, one bundle per run).

Names are imported on first use: a daemon's client that checks ``--ulimit`` through
``executor.spec`` must not pay for runc's machinery (and trio) at every start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazybuild.lazyexports import lazy_exports

if TYPE_CHECKING:
    from lazybuild.executor.errors import ContainerError
    from lazybuild.executor.etcfiles import prepare_etc_files
    from lazybuild.executor.mounts import MountSpec
    from lazybuild.executor.runc import RunResult, run_container
    from lazybuild.executor.spec import ProcessSpec, generate_spec
    from lazybuild.executor.users import ResolvedUser, resolve_user

__getattr__ = lazy_exports(
    __name__,
    {
        "ContainerError": "errors",
        "MountSpec": "mounts",
        "ProcessSpec": "spec",
        "ResolvedUser": "users",
        "RunResult": "runc",
        "generate_spec": "spec",
        "prepare_etc_files": "etcfiles",
        "resolve_user": "users",
        "run_container": "runc",
    },
)

__all__ = [
    "ContainerError",
    "MountSpec",
    "ProcessSpec",
    "ResolvedUser",
    "RunResult",
    "generate_spec",
    "prepare_etc_files",
    "resolve_user",
    "run_container",
]
