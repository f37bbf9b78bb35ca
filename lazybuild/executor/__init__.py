"""Run processes in containers with runc (buildkit's executor, one bundle per run)."""

from lazybuild.executor.errors import ContainerError
from lazybuild.executor.etcfiles import prepare_etc_files
from lazybuild.executor.mounts import MountSpec
from lazybuild.executor.runc import RunResult, run_container
from lazybuild.executor.spec import ProcessSpec, generate_spec
from lazybuild.executor.users import ResolvedUser, resolve_user

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
