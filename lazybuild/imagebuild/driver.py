"""One build, start to end: run the frontend, hand its result over, clean up.

The frontend (``# syntax=`` picks it; the built-in Dockerfile frontend by default) gets
the build through a gateway (``lazybuild.gateway``): its solves run here, through one
worker and cache store set up on the first solve. Everything the build mounts (the lazy
filesystem process, overlays of steps, views of results the frontend read) lives in one
``AsyncExitStack`` and is gone when ``run_build`` returns or raises, whatever happened;
staging directories a killed build left are removed before a new one starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from lazybuild.cache.space import StateDirFullError, is_no_space, names_a_file
from lazybuild.context.dockerignore import DockerIgnore, find_dockerignore, parse_dockerignore
from lazybuild.context.listing import BuildContext
from lazybuild.errors import LazybuildError, UsageError
from lazybuild.gateway.bridge import BuildGateway
from lazybuild.gateway.contract import Frontend, FrontendInputs
from lazybuild.gateway.dockerfile import DockerfileFrontend
from lazybuild.gateway.imageconfig import ImageConfig
from lazybuild.gateway.imagefrontend import ImageFrontend
from lazybuild.gateway.running import run_frontend
from lazybuild.gateway.selection import select_frontend, syntax_of
from lazybuild.graph import Definition, OpMetadata
from lazybuild.imagebuild.filesystem import OwnedFilesystem, build_filesystem
from lazybuild.imagebuild.graphing import BuildGraph
from lazybuild.imagebuild.request import BuildRequest
from lazybuild.lazyfs.client import (
    FetchReport,
    LazyMountService,
    ReadFailure,
    describe_read_failures,
)
from lazybuild.lazyfs.shared import SharedFilesystem
from lazybuild.lazyfs.stale import cleanup_stale_mounts
from lazybuild.oci.platform import Platform, host_platform
from lazybuild.registry.client import RegistryClient, ResolvedImage
from lazybuild.registry.options import RegistryOptions
from lazybuild.remotecache.records import ImportedCacheStore, ObservedCacheStore, TouchedRecord
from lazybuild.remotecache.registrycache import ImportedCache, import_caches
from lazybuild.solver import (
    CacheStore,
    ProgressWriter,
    Solver,
    SQLiteCacheStore,
    VertexFailedError,
)
from lazybuild.worker.cachemounts import CacheMounts, MountContent
from lazybuild.worker.execop import ExecError
from lazybuild.worker.imageop import image_layers
from lazybuild.worker.imagerecords import ImageRecords
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.learnedreads import LearnedReads
from lazybuild.worker.resources import ImageResolver, WorkerResources
from lazybuild.worker.rootfs import LayerMounter
from lazybuild.worker.worker import Worker

_FETCH_POLL_SECONDS = 1.0


class BuildFailedError(LazybuildError):
    """A step failed; the message names the source line (the Dockerfile's) and the step.

    ``tail`` is the end of a failed RUN step's output, shown above the error line.
    """

    def __init__(self, message: str, tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tail = tail


@dataclass(frozen=True)
class BuildResult:
    """The built filesystem and its image config (an OCI image config, as data), and the
    tools to look at it while the build's mounts are still up (``mounter`` mounts
    ``snapshot`` for a local export). ``graph`` is the Dockerfile frontend's plan; None
    when another frontend built."""

    snapshot: Snapshot
    config: ImageConfig
    graph: BuildGraph | None
    mounter: LayerMounter
    store: LayerStore
    # The cache records this build loaded or saved (and those they derive from), for a
    # cache export.
    cache_records: tuple[TouchedRecord, ...] = ()
    # What this build's RUN steps read of their base images, by step key (the same).
    learned_reads: Mapping[str, Sequence[Sequence[str]]] = field(default_factory=dict)
    # The cache mounts this build's steps used, for a cache export with cache-mounts=true.
    cache_mounts: Mapping[str, MountContent] = field(default_factory=dict)


Finish = Callable[[BuildResult], Awaitable[None]]


class FetchHook(Protocol):
    """``BuildProgress.fetch_status``: an image's bytes fetched, of its size, and its
    whole-layer downloads under way (bytes done, total), if any."""

    def __call__(
        self,
        image: str,
        fetched: int,
        size: int | None,
        downloading: tuple[int, int] | None,
        /,
    ) -> None: ...


@dataclass(frozen=True)
class BuildOutcome:
    config: ImageConfig
    snapshot: Snapshot
    fetch_report: FetchReport | None
    # What the build read from this machine: the Dockerfile, its .dockerignore, every
    # context file a COPY or ADD selected (``--depfile``).
    inputs: tuple[Path, ...] = ()


def _platform(request: BuildRequest) -> Platform:
    host = host_platform()
    if request.platform is None:
        return host
    wanted = Platform.parse(request.platform)
    if wanted != host:
        raise UsageError(
            f"--platform {request.platform}: lazybuild builds for this machine's "
            f"platform ({host}) only"
        )
    return wanted


async def run_build(
    request: BuildRequest,
    *,
    state_dir: Path,
    registry: RegistryOptions,
    progress: ProgressWriter | None,
    finish: Finish,
    on_line: Callable[[str], None] = lambda text: None,
    on_fetch: FetchHook | None = None,
    filesystem: LazyMountService | None = None,
    shared_filesystem: SharedFilesystem | None = None,
) -> BuildOutcome:
    """Build ``request``; ``finish`` exports the result before the mounts come down.

    ``on_fetch(image, fetched, size, downloading)`` hears, about once a second, how
    much of each lazily mounted base image has been fetched (``downloading``: bytes done
    and total of its whole-layer downloads under way, or None). ``filesystem`` is a lazy filesystem
    the caller spawned already (``build_filesystem``); the build stops it at the end.
    ``shared_filesystem`` (a daemon's) lends one that outlives the build instead."""
    if filesystem is not None and shared_filesystem is not None:
        raise ValueError("run_build: a build's own filesystem or a shared one, not both")
    platform = _platform(request)
    BuildContext(request.context_dir, None)  # a missing context fails here, first
    source_path = request.dockerfile_path
    source = _read_source(source_path)
    selected = select_frontend(syntax_of(source, source_path.name, request.build_args))
    ignore_file = find_dockerignore(request.context_dir, source_path)
    excludes = (
        tuple(parse_dockerignore(ignore_file.read_bytes(), ignore_file.name)) if ignore_file else ()
    )
    await trio.to_thread.run_sync(cleanup_stale_mounts, state_dir)
    store = LayerStore(state_dir)
    await trio.to_thread.run_sync(store.clean_staging)
    async with (
        registry.client() as client,
        AsyncExitStack() as stack,
        trio.open_nursery() as warm_ups,
    ):
        stack.enter_context(store.in_use())
        spawned = [filesystem] if filesystem is not None else []

        def next_filesystem() -> LazyMountService:
            # The spawned filesystem once: if it died before it served (the mounter
            # closed it), the next attempt starts a new one rather than reusing it.
            return spawned.pop() if spawned else build_filesystem(state_dir, registry)

        mounter = LayerMounter(
            store,
            shared_filesystem or OwnedFilesystem(next_filesystem),
            stack,
            on_unpacked=on_line,
        )
        # The filesystem process starts while the frontend reads its source and resolves
        # base images, and each image's layers are opened as soon as it is resolved,
        # while the first steps are keyed: the first RUN then finds its mounts ready.
        warm_ups.start_soon(mounter.warm_up, ())
        if on_fetch is not None:
            warm_ups.start_soon(_report_fetches, mounter, on_fetch)
        resolver = ImageResolver(
            client,
            platform,
            records=ImageRecords(store.root / "images"),
            pull=request.pull,
        )

        def warm_up(image: ResolvedImage) -> None:
            warm_ups.start_soon(mounter.warm_up, image_layers(image))

        context = BuildContext(request.context_dir, DockerIgnore(excludes), hidden=(state_dir,))
        cache_mounts = state_dir / "build" / "cache-mounts"
        resources = WorkerResources(
            store=store,
            mounter=mounter,
            images=resolver,
            contexts={_CONTEXT: context, **_named_local_contexts(request, state_dir)},
            secrets=dict(request.secrets),
            cache_mounts=cache_mounts,
            platform=platform,
            default_network="none" if request.network == "none" else "host",
            learned=LearnedReads(store.root / "learned"),
            cache_mount_state=CacheMounts(cache_mounts),
            on_cache_miss=on_line,
            learn_cache_mount_writes=request.export_cache,
            extra_hosts=request.extra_hosts,
            shm_size=request.shm_size,
            ulimits=request.ulimits,
            ssh_agents=dict(request.ssh),
        )
        solving = _Solving(
            request, state_dir, client, resources, mounter, progress=progress, on_line=on_line
        )
        warm_ups.start_soon(solving.prepare)
        inputs = FrontendInputs(
            context=_CONTEXT,
            source=source,
            source_name=source_path.name,
            platform=str(platform),
            build_args=dict(request.build_args),
            target=request.target,
            labels=dict(request.labels),
            context_excludes=excludes,
            syntax=None if selected.builtin else selected.name,
            named_contexts=_named_contexts(request),
            no_cache_filter=request.no_cache_filter,
        )
        gateway = BuildGateway(
            inputs,
            solve=solving.solve,
            resolver=resolver,
            mounter=mounter,
            store=store,
            on_image=warm_up,
        )
        dockerfile = DockerfileFrontend()
        frontend: Frontend = selected.frontend or dockerfile
        if selected.image is not None:
            frontend = ImageFrontend(
                selected.image, resolver=resolver, mounter=mounter, store=store, on_line=on_line
            )
        try:
            output = await run_frontend(selected.name, frontend, gateway, builtin=selected.builtin)
            touched = solving.touched_records()
        finally:
            # Results the frontend read are unmounted, references released; the one
            # it returned is the driver's now, by snapshot.
            await gateway.aclose()
            solving.close()
        snapshot = output.snapshot
        learned = resources.learned
        mounts = resources.cache_mount_state
        with _no_space_reported(state_dir, "exporting the image", "the output's destination"):
            learned_reads: Mapping[str, Sequence[Sequence[str]]] = {}
            mount_contents: Mapping[str, MountContent] = {}
            if request.export_cache:
                if learned is not None:
                    learned_reads = await trio.to_thread.run_sync(_touched_learned, learned)
                if mounts is not None:
                    mount_contents = await trio.to_thread.run_sync(mounts.contents)
            await finish(
                BuildResult(
                    snapshot,
                    output.config,
                    dockerfile.graph,
                    mounter,
                    store,
                    touched,
                    learned_reads,
                    mount_contents,
                )
            )
        report = await mounter.fetch_report()
        if on_fetch is not None and report is not None:
            # The last figures, not the last poll's: a download done since is shown done.
            await _fetches_heard(mounter, on_fetch, report)
        warm_ups.cancel_scope.cancel()
    inputs_read = [source_path]
    if ignore_file is not None:
        inputs_read.append(ignore_file)
    inputs_read += [context.root / rel for rel in sorted(context.selected)]
    return BuildOutcome(output.config, snapshot, report, tuple(inputs_read))


# The name of the build context's local source (``State.local``).
_CONTEXT = "context"
_NAMED_CONTEXT_PREFIX = "context:"  # + the --build-context name: its local source
_IMAGE_SCHEME = "docker-image://"
_OCI_LAYOUT_SCHEME = "oci-layout://"


def _named_local_contexts(request: BuildRequest, state_dir: Path) -> dict[str, BuildContext]:
    """The --build-context directories as local sources, each with its own .dockerignore."""
    found: dict[str, BuildContext] = {}
    for name, value in request.named_contexts.items():
        if value.startswith((_IMAGE_SCHEME, _OCI_LAYOUT_SCHEME)):
            continue
        directory = Path(value)
        ignore_file = find_dockerignore(directory)
        patterns = (
            parse_dockerignore(ignore_file.read_bytes(), str(ignore_file)) if ignore_file else ()
        )
        found[_NAMED_CONTEXT_PREFIX + name] = BuildContext(
            directory, DockerIgnore(tuple(patterns)), hidden=(state_dir,)
        )
    return found


def _named_contexts(request: BuildRequest) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in request.named_contexts.items():
        if value.startswith(_IMAGE_SCHEME):
            found[name] = value
        elif value.startswith(_OCI_LAYOUT_SCHEME):
            # An image to the frontend, whose reference the build's ImageResolver reads
            # from the layout (worker.layoutimage).
            found[name] = _IMAGE_SCHEME + value
        else:
            found[name] = f"local:{_NAMED_CONTEXT_PREFIX}{name}"
    return found


def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read Dockerfile {path}: {error.strerror}") from None


class _Solving:
    """The build's solves: one worker and cache store for all of them. Set up
    (remote caches imported, the SQLite store opened) by ``prepare`` while the frontend
    plans, or by the first solve; a failed step becomes ``BuildFailedError`` naming the
    source line its op's metadata gives."""

    def __init__(
        self,
        request: BuildRequest,
        state_dir: Path,
        client: RegistryClient,
        resources: WorkerResources,
        mounter: LayerMounter,
        *,
        progress: ProgressWriter | None,
        on_line: Callable[[str], None],
    ) -> None:
        self._request = request
        self._state_dir = state_dir
        self._client = client
        self._resources = resources
        self._mounter = mounter
        self._progress = progress
        self._on_line = on_line
        self._worker = Worker(resources)
        self._setup_lock = trio.Lock()
        self._cache: SQLiteCacheStore | None = None
        self._store: CacheStore | None = None
        self._observed: ObservedCacheStore | None = None
        self._imported = ImportedCache()

    async def prepare(self) -> None:
        """Import the remote caches and open the store now, while the frontend plans: a
        RUN step's learned prefetch, which comes with an imported cache, then starts as
        soon as the solver knows the step runs. A failure here is the first solve's to
        report (a frontend that fails first reports its own error)."""
        with contextlib.suppress(Exception):
            await self._cache_store()

    async def _cache_store(self) -> CacheStore:
        async with self._setup_lock:
            if self._store is not None:
                return self._store
            request, resources = self._request, self._resources
            imported = await import_caches(request.cache_from, self._client, self._on_line)
            self._imported = imported
            learned = resources.learned
            if learned is not None and imported.learned:
                await trio.to_thread.run_sync(_adopt_learned, learned, imported.learned)
            mounts = resources.cache_mount_state
            if mounts is not None and imported.mounts:
                adopted = await trio.to_thread.run_sync(mounts.adopt, imported.mounts)
                if adopted:
                    self._on_line(
                        f"{len(adopted)} cache mount(s) from the imported cache, mounted lazily"
                    )
            with _no_space_reported(self._state_dir, "opening the build cache"):
                self._cache = SQLiteCacheStore(resources.store.root / "cache.db")
            store_used: CacheStore = self._cache
            if imported.records:
                store_used = ImportedCacheStore(self._cache, imported.records)
            # Which records the build touched matters only to a cache export.
            if request.export_cache:
                self._observed = ObservedCacheStore(store_used)
            self._store = self._observed or store_used
            return self._store

    async def solve(self, definition: Definition) -> Snapshot:
        store = await self._cache_store()
        while True:
            solver = Solver(self._worker.resolve_op, store, load_result=self._worker.load_result)
            try:
                with _no_space_reported(self._state_dir, "building"):
                    result = await solver.solve(
                        definition, no_cache=self._request.no_cache, progress=self._progress
                    )
                return result if isinstance(result, Snapshot) else Snapshot()
            except VertexFailedError as failure:
                # A hit's layer is verified chunk by chunk as it is read: a corrupt
                # chunk shows only when a later step reads it. That hit's steps run
                # again (what succeeded meanwhile is cached locally now).
                corrupt = await _newly_corrupt_hits(self._mounter, self._imported, self._resources)
                if not corrupt:
                    raise _build_failure(failure, definition.metadata, self._state_dir) from None
                self._resources.refused_layers.update(failure.layer for failure in corrupt)
                self._on_line(
                    "warning: an imported cache hit is corrupt "
                    f"({describe_read_failures(corrupt)}); running its steps again"
                )

    def touched_records(self) -> tuple[TouchedRecord, ...]:
        return tuple(self._observed.touched_records()) if self._observed is not None else ()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


async def _newly_corrupt_hits(
    mounter: LayerMounter, imported: ImportedCache, resources: WorkerResources
) -> list[ReadFailure]:
    """Reads that failed in layers of imported cache hits not refused yet (a base
    image's corrupt layer is not a cache problem: the build fails as it did)."""
    if not imported.records:
        return []
    report = await mounter.fetch_report()
    if report is None or not report.failures:
        return []
    hits = await trio.to_thread.run_sync(imported.layer_digests)
    return [
        failure
        for failure in report.failures
        if failure.layer in hits and failure.layer not in resources.refused_layers
    ]


def _adopt_learned(learned: LearnedReads, imported: Mapping[str, Sequence[Sequence[str]]]) -> None:
    for key, layers in imported.items():
        learned.adopt(key, layers)


def _touched_learned(learned: LearnedReads) -> dict[str, list[list[str]]]:
    found = {}
    for key in sorted(learned.touched):
        layers = learned.load(key)
        if layers:
            found[key] = layers
    return found


async def _report_fetches(mounter: LayerMounter, on_fetch: FetchHook) -> None:
    """Each base image's figures, once per ``_FETCH_POLL_SECONDS``."""
    while True:
        await trio.sleep(_FETCH_POLL_SECONDS)
        try:
            report = await mounter.fetch_report()
            if report is not None:
                await _fetches_heard(mounter, on_fetch, report)
        except LazybuildError:
            continue  # the filesystem is starting or stopping: next time


async def _fetches_heard(mounter: LayerMounter, on_fetch: FetchHook, report: FetchReport) -> None:
    """``report`` per base image, its whole-layer downloads under way (layers that are
    not eStargz) counted in, and given apart."""
    totals = await mounter.fetch_by_image(report)
    downloads = mounter.downloads_by_image(report)
    for image in sorted(totals.keys() | downloads.keys()):
        fetched, size = totals.get(image, (0, 0))
        downloading = downloads.get(image)
        if downloading is not None:
            fetched, size = fetched + downloading[0], size + downloading[1]
        on_fetch(image, fetched, size, downloading)


@contextlib.contextmanager
def _no_space_reported(state_dir: Path, doing: str, or_at: str | None = None) -> Iterator[None]:
    """A write that failed for lack of space in the state dir, as one line that names
    it (the failure of a step is named by ``_build_failure``). A full disk elsewhere
    (an export's destination, ``or_at``) is left as it is when the error says so;
    when it names no file, both places are named."""
    try:
        yield
    except VertexFailedError:
        raise
    except Exception as exc:
        if is_no_space(exc, within=state_dir):
            raise StateDirFullError(state_dir, doing) from None
        if or_at is not None and is_no_space(exc) and not names_a_file(exc):
            raise StateDirFullError(state_dir, doing, or_at) from None
        raise


def _build_failure(
    failure: VertexFailedError, metadata_by_op: Mapping[str, OpMetadata], state_dir: Path
) -> BuildFailedError:
    metadata = metadata_by_op.get(failure.digest)
    where = ""
    if metadata is not None and metadata.source_locations:
        location = metadata.source_locations[0]
        where = f"{location.filename}:{location.start_line}: "
    cause = _innermost(failure.cause)
    tail = cause.tail if isinstance(cause, ExecError) else ()
    name = failure.description or failure.digest
    if is_no_space(failure.cause, within=state_dir):
        return BuildFailedError(
            f"no space left in the state directory {state_dir} while running {where}{name}",
            tail,
        )
    if failure.action == "exec":
        return BuildFailedError(f"{where}{name}: {cause}", tail)
    return BuildFailedError(f"{where}{name}: {failure.action} failed: {cause}", tail)


def _innermost(error: BaseException) -> BaseException:
    """What to name for a step's failure: inside an exception group (concurrent parts of
    a step that failed together, e.g. when the filesystem process dies under them), the
    first error of our own kind, else the first OSError, else the first one."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    leaves = [_innermost(inner) for inner in error.exceptions]
    for kind in (LazybuildError, OSError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else error
