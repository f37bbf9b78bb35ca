"""The extra mounts of a RUN step: other snapshots, cache directories, tmpfs, secrets,
ssh agent sockets (``sshforward``).

Everything a mount needs on the host is set up inside the step's staging area or the
persistent cache-mount directory, and torn down by the ``AsyncExitStack`` the caller
passes in, so a failed or cancelled step leaves nothing mounted.

Secrets never touch the disk: their files (and the runc bundle of a step that has
secrets in its environment, whose ``config.json`` holds them) live on a private tmpfs
mounted at ``scratch/secrets`` of the step's staging area (``secret_storage``). A
SIGKILL leaves only that memory-backed mount, which the next command's cleanup of dead
staging areas unmounts (``lazyfs.stale.remove_dead_leftovers``).

``mount_cache_deps``: a read-only bind mount of a directory of another snapshot keys the
step on that directory's content, as BuildKit does, so a change elsewhere in a stage
mounted with ``from=STAGE,source=DIR`` does not rerun the step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.errors import LazybuildError
from lazybuild.executor.mounts import MountSpec
from lazybuild.executor.rootpath import resolve_in_root
from lazybuild.graph.ops import Exec, ExecMount
from lazybuild.snapshot import syscalls
from lazybuild.snapshot.mountinfo import is_mounted
from lazybuild.solver import CacheDep, Result
from lazybuild.worker.cachemounts import cache_mount_id, cache_mount_name
from lazybuild.worker.layers import RemoteLayer, Snapshot
from lazybuild.worker.layerstore import StagingArea
from lazybuild.worker.resources import WorkerResources
from lazybuild.worker.sshforward import forwarded_agent

_LOCK_POLL_SECONDS = 0.2
_MAX_PRIVATE_COPIES = 64
# The secrets tmpfs holds the secrets, plus room for a runc bundle (config.json).
_SECRETS_HEADROOM = 4 << 20
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8


class MountSetupError(LazybuildError):
    """A RUN mount cannot be provided (missing secret, unsupported kind, bad path)."""


@dataclass(frozen=True)
class WritableMount:
    """A writable snapshot mount whose changes become an output of the step."""

    mount: ExecMount
    base: Snapshot
    area: StagingArea


async def setup_mount(
    mount: ExecMount,
    snapshot: Snapshot | None,
    *,
    position: int,
    area: StagingArea,
    resources: WorkerResources,
    stack: AsyncExitStack,
    areas: contextlib.ExitStack,
) -> tuple[MountSpec | None, WritableMount | None]:
    """The runc mount for ``mount`` (None: nothing to mount, e.g. an optional secret
    that is absent) and, for a writable bind mount, where its changes land.

    Mounts are undone by ``stack``; staging areas of writable mounts are removed by
    ``areas``, which the caller closes after it has committed their upper directories.
    """
    if mount.kind == "bind":
        target = area.scratch / f"mount{position}"
        return await _bind(
            mount, snapshot or Snapshot(), target, resources=resources, stack=stack, areas=areas
        )
    if mount.kind == "cache":
        directory = await stack.enter_async_context(_cache_directory(mount, resources))
        return MountSpec(mount.dest, str(_cache_subpath(directory, mount))), None
    if mount.kind == "tmpfs":
        options = ["nosuid", "nodev"]
        if mount.size:
            options.append(f"size={mount.size}")
        return MountSpec(mount.dest, "tmpfs", "tmpfs", tuple(options)), None
    if mount.kind == "secret":
        return _secret_file(mount, position, area, resources, stack), None
    if mount.kind == "ssh":
        return await _ssh_socket(mount, position, area, resources, stack), None
    if mount.required:
        raise MountSetupError(f"RUN --mount=type={mount.kind} is not supported")
    return None, None


async def _ssh_socket(
    mount: ExecMount,
    position: int,
    area: StagingArea,
    resources: WorkerResources,
    stack: AsyncExitStack,
) -> MountSpec | None:
    """A socket relaying to the ``--ssh`` agent of the mount's id (``sshforward``);
    None for an optional mount whose id was not given (BuildKit skips it too)."""
    agent_id = mount.secret_id or "default"
    upstream = resources.ssh_agents.get(agent_id)
    if upstream is None:
        if not mount.required:
            return None
        if not resources.ssh_agents:  # BuildKit's words, without and with --ssh
            raise MountSetupError(f'no SSH key "{agent_id}" forwarded from the client')
        raise MountSetupError(f"unset ssh forward key {agent_id}")
    path = await stack.enter_async_context(
        forwarded_agent(
            upstream,
            area.scratch / f"ssh{position}",
            uid=mount.uid or 0,
            gid=mount.gid or 0,
            mode=mount.mode if mount.mode is not None else 0o600,
        )
    )
    return MountSpec(mount.dest, str(path), "bind", ("rbind", "rprivate"))


async def _bind(
    mount: ExecMount,
    snapshot: Snapshot,
    target: Path,
    *,
    resources: WorkerResources,
    stack: AsyncExitStack,
    areas: contextlib.ExitStack,
) -> tuple[MountSpec, WritableMount | None]:
    writable: WritableMount | None = None
    if mount.readonly:
        root = await stack.enter_async_context(resources.mounter.mounted(snapshot, target))
    else:
        # Writes to a non-read-only bind mount go to an upper directory of their own:
        # kept when the mount has an output, thrown away otherwise (as in BuildKit).
        mount_area = areas.enter_context(resources.store.staging())
        root = await stack.enter_async_context(
            resources.mounter.mounted(
                snapshot, mount_area.merged, upper=mount_area.upper, work=mount_area.work
            )
        )
        if mount.output is not None:
            writable = WritableMount(mount, snapshot, mount_area)
    source = resolve_in_root(root, mount.source_path)
    if not source.exists():
        raise MountSetupError(f"RUN --mount source {mount.source_path!r} does not exist")
    options = ("rbind", "rprivate", "ro") if mount.readonly else ("rbind", "rprivate")
    return MountSpec(mount.dest, str(source), "bind", options), writable


def _cache_subpath(directory: Path, mount: ExecMount) -> Path:
    """``source=`` of a cache mount: a directory inside the cache, as BuildKit mounts it.

    Symlinks resolve inside the cache, so a link the cache holds cannot reach the host;
    like BuildKit, a source the cache does not have is an error.
    """
    if mount.source_path.strip("/") in ("", "."):
        return directory
    source = resolve_in_root(directory, mount.source_path)
    if not source.is_dir():
        raise MountSetupError(
            f"RUN --mount=type=cache source {mount.source_path!r} is not a directory in the cache"
        )
    return source


def _secret_file(
    mount: ExecMount,
    position: int,
    area: StagingArea,
    resources: WorkerResources,
    stack: AsyncExitStack,
) -> MountSpec | None:
    secret_id = mount.secret_id or ""
    value = resources.secrets.get(secret_id)
    if value is None:
        if mount.required:
            raise MountSetupError(f"secret {secret_id!r} is required but was not given")
        return None
    path = secret_storage(area, resources, stack) / f"{position}"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(value)
    os.chown(path, mount.uid or 0, mount.gid or 0)
    os.chmod(path, mount.mode if mount.mode is not None else 0o400)
    return MountSpec(mount.dest, str(path), "bind", ("rbind", "rprivate", "ro"))


def secret_storage(area: StagingArea, resources: WorkerResources, stack: AsyncExitStack) -> Path:
    """``area``'s memory-backed directory for secrets (a private tmpfs, mounted on first
    use and unmounted by ``stack``): what is written there is never on disk."""
    directory = area.scratch / "secrets"
    if is_mounted(directory):
        return directory
    directory.mkdir(mode=0o700, exist_ok=True)
    size = sum(len(value) for value in resources.secrets.values()) + _SECRETS_HEADROOM
    syscalls.mount(
        "lazybuild-secrets",
        directory,
        "tmpfs",
        _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
        f"mode=0700,size={size}",
    )
    stack.callback(_unmount_secrets, directory)
    return directory


def _unmount_secrets(directory: Path) -> None:
    with contextlib.suppress(OSError):  # the staging area's removal unmounts what is left
        syscalls.umount(directory, syscalls.MNT_DETACH)


@asynccontextmanager
async def _cache_directory(mount: ExecMount, resources: WorkerResources) -> AsyncIterator[Path]:
    """The persistent directory of a cache mount, locked while used when asked to.

    ``shared``: used by everyone at once; ``locked``: one step at a time, others wait;
    ``private``: a step that finds it in use gets a directory of its own.
    """
    name = cache_mount_name(mount)
    base = resources.cache_mounts / name
    travelling = resources.cache_mount_state
    lowers: tuple[RemoteLayer, ...] = ()
    if travelling is not None:
        travelling.used[name] = cache_mount_id(mount)
        lowers = await trio.to_thread.run_sync(travelling.lowers, name)
    if lowers:
        # Imported content under a local upper (``worker.cachemounts``): an overlay's
        # upper cannot be shared, so one step at a time, whatever the sharing mode.
        while True:
            with _locked(base) as held:
                if held:
                    async with _overlaid(base, lowers, mount, resources) as merged:
                        yield merged
                    return
            await trio.sleep(_LOCK_POLL_SECONDS)
    if mount.sharing == "shared":
        yield _prepared(base, mount)
        return
    if mount.sharing == "locked":
        while True:
            with _locked(base) as held:
                if held:
                    yield _prepared(base, mount)
                    return
            await trio.sleep(_LOCK_POLL_SECONDS)
    for suffix in range(_MAX_PRIVATE_COPIES):
        candidate = base if suffix == 0 else base.with_name(f"{name}-{suffix}")
        with _locked(candidate) as held:
            if held:
                yield _prepared(candidate, mount)
                return
    raise MountSetupError(f"too many concurrent users of private cache {mount.cache_id!r}")


@asynccontextmanager
async def _overlaid(
    base: Path, lowers: Sequence[RemoteLayer], mount: ExecMount, resources: WorkerResources
) -> AsyncIterator[Path]:
    upper = _prepared(base / "upper", mount)
    work = base / "work"
    work.mkdir(parents=True, exist_ok=True)
    target = base / "merged"
    async with resources.mounter.mounted(
        Snapshot(tuple(lowers)), target, upper=upper, work=work
    ) as merged:
        yield merged


def _prepared(directory: Path, mount: ExecMount) -> Path:
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, mount.uid or 0, mount.gid or 0)
        os.chmod(directory, mount.mode if mount.mode is not None else 0o755)
    return directory


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[bool]:
    """Try to take ``directory``'s lock (a file lock: other builds may share the cache)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.with_name(directory.name + ".lock")
    with open(lock_path, "a+b") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ordered_specs(specs: Sequence[MountSpec]) -> list[MountSpec]:
    """Mounts parents first, so ``/a`` is in place before ``/a/b`` is mounted on it."""
    return sorted(specs, key=lambda spec: spec.destination.rstrip("/").count("/"))


def _names_subtree(path: str) -> bool:
    return path.strip("/") not in ("", ".")


def content_keyed_inputs(op: Exec) -> dict[int, tuple[str, ...]]:
    """The inputs of ``op`` keyed by the content of directories of them, with those
    directories: inputs whose every use is a bind of a subdirectory whose writes are
    thrown away (read-only, or writable without an output: the step sees only what the
    directory holds, as BuildKit keys it). The others (the root, mounts whose writes
    become an output, whole-snapshot mounts) key by the input's own key."""
    selected: dict[int, list[str]] = {}
    whole: set[int] = set()
    for position, mount in enumerate(op.mounts):
        if mount.input is None:
            continue
        by_content = (
            position > 0
            and mount.kind == "bind"
            and (mount.readonly or mount.output is None)
            and _names_subtree(mount.source_path)
        )
        if by_content:
            selected.setdefault(mount.input, []).append(mount.source_path)
        else:
            whole.add(mount.input)
    return {index: tuple(paths) for index, paths in selected.items() if index not in whole}


def mount_cache_deps(op: Exec, resources: WorkerResources) -> tuple[CacheDep, ...]:
    """One ``CacheDep`` per input of ``op`` (see :func:`content_keyed_inputs`)."""
    deps = [CacheDep() for _ in op.inputs]
    for index, paths in content_keyed_inputs(op).items():
        if index < len(deps):
            deps[index] = CacheDep(
                selector="\n".join(paths), compute_digest=_SubtreeDigest(resources, paths)
            )
    return tuple(deps)


class _SubtreeDigest:
    """The content key of some directories of a snapshot, mounted read-only to be read."""

    def __init__(self, resources: WorkerResources, paths: tuple[str, ...]) -> None:
        self._resources = resources
        self._paths = paths

    async def __call__(self, result: Result) -> str:
        assert isinstance(result, Snapshot)
        by_layers = remote_snapshot_key(result, self._paths)
        if by_layers is not None:
            return by_layers
        with self._resources.store.staging() as area:
            async with self._resources.mounter.mounted(result, area.scratch / "keyed") as root:
                text = await trio.to_thread.run_sync(_subtrees_text, root, self._paths)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def remote_snapshot_key(snapshot: Snapshot, paths: Sequence[str]) -> str | None:
    """For a snapshot of remote layers only (an image, imported hits), a key from their
    digests: they already say what every directory holds, and hashing the directories
    would fetch them whole (a toolchain mounted from an image is hundreds of MB, read
    lazily only as used). None when a layer was made here."""
    if not snapshot.layers or not all(isinstance(layer, RemoteLayer) for layer in snapshot.layers):
        return None
    text = "\n".join(["layers", *(layer.key for layer in snapshot.layers), "paths", *paths])
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _subtrees_text(root: Path, paths: Sequence[str]) -> str:
    parts = []
    for path in paths:
        parts.append(f"{path}={subtree_digest(resolve_in_root(root, path))}")
    return "\n".join(parts)


def subtree_digest(directory: Path) -> str:
    """A digest of the tree at ``directory``: names, types, modes, owners, file contents
    and link targets, not times (a rebuilt stage writes new times, not new content)."""
    hasher = hashlib.sha256()
    try:
        top = os.lstat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    hasher.update(_entry_text(".", directory, top).encode())
    if stat.S_ISDIR(top.st_mode):
        for path in sorted(_walk(directory)):
            st = os.lstat(path)
            hasher.update(_entry_text(path.relative_to(directory).as_posix(), path, st).encode())
    return "sha256:" + hasher.hexdigest()


def _walk(directory: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in (*dirnames, *filenames):
            yield Path(dirpath, name)


def _entry_text(name: str, path: Path, st: os.stat_result) -> str:
    head = f"{name!r} {st.st_mode:o} {st.st_uid}:{st.st_gid}"
    if stat.S_ISLNK(st.st_mode):
        return f"{head} -> {os.readlink(path)!r}\n"
    if stat.S_ISREG(st.st_mode):
        return f"{head} {_file_sha256(path)}\n"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return f"{head} {st.st_rdev}\n"
    return f"{head}\n"


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
