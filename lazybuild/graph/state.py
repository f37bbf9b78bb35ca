"""An immutable builder for build graphs, in the manner of buildkit's ``llb.State``.

A ``State`` is one output of one op (or the empty filesystem) plus the settings later
ops are built with (env, working directory, user, network, hostname). Every method
returns a new state; nothing is hashed until ``marshal``, which writes the reachable ops
inputs-first and deduplicates ops that encode the same.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from lazybuild.graph.definition import Definition, digest_of
from lazybuild.graph.ops import (
    CacheSharing,
    ChownOpt,
    Copy,
    Diff,
    Exec,
    ExecMount,
    File,
    HttpSource,
    ImageSource,
    Input,
    LocalSource,
    Merge,
    Mkdir,
    Mkfile,
    MountKind,
    Network,
    Operation,
    OpMetadata,
    Rm,
    SecretEnv,
    encode_op,
)


@dataclass(frozen=True, eq=False)
class _Node:
    """An op whose index fields point into ``sources`` instead of digests not yet known."""

    op: Operation
    sources: tuple[_Output, ...]
    metadata: OpMetadata


@dataclass(frozen=True)
class _Output:
    node: _Node
    index: int


@dataclass(frozen=True)
class _Settings:
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "/"
    user: str = ""
    network: Network = "default"
    hostname: str = ""


@dataclass(frozen=True, kw_only=True)
class RunMount:
    """An extra mount for ``State.run``: ``source`` (``None``: scratch) at ``dest``.

    The fields mean what they mean on ``ExecMount``; a writable bind mount becomes an
    output of the run, reachable with ``ExecState.get_mount(dest)``, unless
    ``no_output`` (BuildKit's ``ForceNoOutput``): then its writes are thrown away.
    """

    dest: str
    source: State | None = None
    source_path: str = "/"
    readonly: bool = False
    kind: MountKind = "bind"
    cache_id: str | None = None
    sharing: CacheSharing = "shared"
    secret_id: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    required: bool = False
    no_output: bool = False


@dataclass(frozen=True)
class CopyFrom:
    """A copy out of another state for ``State.file``; made by ``copy()``."""

    source: State
    action: Copy


FileStep = CopyFrom | Mkdir | Mkfile | Rm


class _Inputs:
    """Collects the distinct outputs an op reads, in first-use order."""

    def __init__(self) -> None:
        self.outputs: list[_Output] = []

    def index(self, state: State | None) -> int | None:
        output = state._output if state is not None else None
        if output is None:
            return None
        if output not in self.outputs:
            self.outputs.append(output)
        return self.outputs.index(output)


@dataclass(frozen=True)
class State:
    """One filesystem of the graph (an op output, or scratch) and the settings later ops
    on it are built with. ``State()`` is scratch; use the constructors below."""

    _output: _Output | None = None
    _settings: _Settings = field(default_factory=_Settings)

    @staticmethod
    def scratch() -> State:
        return State()

    @staticmethod
    def image(ref: str, platform: str, *, metadata: OpMetadata | None = None) -> State:
        return State._from_op(ImageSource(ref=ref, platform=platform), (), metadata)

    @staticmethod
    def local(
        name: str,
        *,
        include_patterns: Sequence[str] = (),
        exclude_patterns: Sequence[str] = (),
        followpaths: Sequence[str] = (),
        metadata: OpMetadata | None = None,
    ) -> State:
        op = LocalSource(
            name=name,
            include_patterns=tuple(include_patterns),
            exclude_patterns=tuple(exclude_patterns),
            followpaths=tuple(followpaths),
        )
        return State._from_op(op, (), metadata)

    @staticmethod
    def http(
        url: str,
        *,
        checksum: str | None = None,
        filename: str | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        metadata: OpMetadata | None = None,
    ) -> State:
        op = HttpSource(url=url, checksum=checksum, filename=filename, mode=mode, uid=uid, gid=gid)
        return State._from_op(op, (), metadata)

    @staticmethod
    def _from_op(
        op: Operation,
        sources: Sequence[_Output],
        metadata: OpMetadata | None,
        settings: _Settings | None = None,
        index: int = 0,
    ) -> State:
        node = _Node(op, tuple(sources), metadata or OpMetadata())
        return State(_Output(node, index), settings or _Settings())

    @property
    def is_scratch(self) -> bool:
        return self._output is None

    # Settings: they change only how later ops are built, never this state's output.

    @property
    def env(self) -> tuple[str, ...]:
        return tuple(f"{key}={value}" for key, value in self._settings.env)

    def get_env(self, key: str) -> str | None:
        return dict(self._settings.env).get(key)

    def with_env(self, key: str, value: str) -> State:
        # Replacing moves the variable to the end, as buildkit's EnvList does.
        kept = tuple(item for item in self._settings.env if item[0] != key)
        return self._with(env=(*kept, (key, value)))

    def without_env(self, key: str) -> State:
        return self._with(env=tuple(item for item in self._settings.env if item[0] != key))

    @property
    def dir(self) -> str:
        return self._settings.cwd

    def with_dir(self, path: str) -> State:
        """Set the working directory; a relative ``path`` is taken from the current one."""
        return self._with(cwd=posixpath.normpath(posixpath.join(self._settings.cwd, path)))

    @property
    def user(self) -> str:
        return self._settings.user

    def with_user(self, user: str) -> State:
        return self._with(user=user)

    @property
    def network(self) -> Network:
        return self._settings.network

    def with_network(self, network: Network) -> State:
        return self._with(network=network)

    @property
    def hostname(self) -> str:
        return self._settings.hostname

    def with_hostname(self, hostname: str) -> State:
        return self._with(hostname=hostname)

    def _with(self, **changes: object) -> State:
        return replace(self, _settings=replace(self._settings, **changes))  # type: ignore[arg-type]

    # Ops.

    def run(
        self,
        args: Sequence[str],
        *,
        mounts: Sequence[RunMount] = (),
        network: Network | None = None,
        proxy_env: Sequence[str] = (),
        secret_env: Sequence[SecretEnv] = (),
        metadata: OpMetadata | None = None,
    ) -> ExecState:
        """Run ``args`` on this state with its env, dir, user, hostname and network
        (``network`` overrides the state's for this run). ``proxy_env``: see ``Exec``."""
        inputs = _Inputs()
        exec_mounts = [ExecMount(input=inputs.index(self), dest="/", output=0)]
        mount_outputs: dict[str, int] = {}
        for mount in mounts:
            output = None
            if mount.kind == "bind" and not mount.readonly and not mount.no_output:
                output = mount_outputs[mount.dest] = len(exec_mounts)
            exec_mounts.append(_exec_mount(mount, inputs.index(mount.source), output))
        outputs = [m.output for m in exec_mounts if m.output is not None]
        renumbered = {old: new for new, old in enumerate(outputs)}
        exec_mounts = [
            replace(m, output=None if m.output is None else renumbered[m.output])
            for m in exec_mounts
        ]
        op = Exec(
            args=tuple(args),
            env=self.env,
            proxy_env=tuple(proxy_env),
            cwd=self.dir,
            user=self.user,
            network=network or self.network,
            hostname=self.hostname,
            mounts=tuple(exec_mounts),
            secret_env=tuple(secret_env),
        )
        node = _Node(op, tuple(inputs.outputs), metadata or OpMetadata())
        return ExecState(
            _Output(node, 0),
            self._settings,
            _node=node,
            _mount_outputs=tuple((dest, renumbered[o]) for dest, o in mount_outputs.items()),
        )

    def file(self, *steps: FileStep, metadata: OpMetadata | None = None) -> State:
        """Apply ``steps`` in order on top of this state, in one op.

        Relative destination paths are taken from this state's working directory and
        relative copy sources from the source state's.
        """
        if not steps:
            raise ValueError("file() needs at least one step")
        inputs = _Inputs()
        base = inputs.index(self)
        actions = [self._file_action(step, inputs) for step in steps]
        op = File(actions=tuple(actions), base_input=base)
        return State._from_op(op, inputs.outputs, metadata, self._settings)

    def _file_action(self, step: FileStep, inputs: _Inputs) -> Copy | Mkdir | Mkfile | Rm:
        if isinstance(step, CopyFrom):
            source_index = inputs.index(step.source)
            if source_index is None:
                raise ValueError(f"cannot copy {step.action.src!r} from scratch")
            return replace(
                step.action,
                src_input=source_index,
                src=_absolute(step.source.dir, step.action.src),
                dest=_absolute(self.dir, step.action.dest),
            )
        return replace(step, path=_absolute(self.dir, step.path))


@dataclass(frozen=True, kw_only=True)
class ExecState(State):
    """The root filesystem after a run; its other writable mounts via ``get_mount``."""

    _node: _Node
    _mount_outputs: tuple[tuple[str, int], ...] = ()

    def root(self) -> State:
        return State(_Output(self._node, 0), self._settings)

    def get_mount(self, dest: str) -> State:
        for mount_dest, output in self._mount_outputs:
            if mount_dest == dest:
                return State(_Output(self._node, output), self._settings)
        raise KeyError(f"no writable bind mount at {dest!r}")


def _exec_mount(mount: RunMount, input_index: int | None, output: int | None) -> ExecMount:
    return ExecMount(
        input=input_index,
        dest=mount.dest,
        source_path=mount.source_path,
        readonly=mount.readonly,
        kind=mount.kind,
        cache_id=mount.cache_id,
        sharing=mount.sharing,
        secret_id=mount.secret_id,
        mode=mount.mode,
        uid=mount.uid,
        gid=mount.gid,
        size=mount.size,
        output=output,
        required=mount.required,
    )


def _absolute(cwd: str, path: str) -> str:
    # No normalisation: a trailing "/" or "/." on a copy destination means "into this
    # directory" to the worker, and wildcards must reach it untouched.
    return path if path.startswith("/") else posixpath.join(cwd, path)


def copy(
    source: State,
    src: str,
    dest: str,
    *,
    follow_symlinks: bool = False,
    dir_copy_contents: bool = False,
    attempt_unpack_docker_compatibility: bool = False,
    create_dest_path: bool = False,
    allow_wildcard: bool = False,
    allow_empty_wildcard: bool = False,
    chown: ChownOpt | None = None,
    chmod: str | None = None,
    include_patterns: Sequence[str] = (),
    exclude_patterns: Sequence[str] = (),
    always_replace_existing: bool = False,
    timestamp: int | None = None,
    required_paths: Sequence[str] = (),
) -> CopyFrom:
    """A copy step for ``State.file``; the options mean what they mean on ``Copy``."""
    action = Copy(
        src_input=0,  # replaced by State.file with the source's input index
        src=src,
        dest=dest,
        follow_symlinks=follow_symlinks,
        dir_copy_contents=dir_copy_contents,
        attempt_unpack_docker_compatibility=attempt_unpack_docker_compatibility,
        create_dest_path=create_dest_path,
        allow_wildcard=allow_wildcard,
        allow_empty_wildcard=allow_empty_wildcard,
        chown=chown,
        chmod=chmod,
        include_patterns=tuple(include_patterns),
        exclude_patterns=tuple(exclude_patterns),
        always_replace_existing=always_replace_existing,
        timestamp=timestamp,
        required_paths=tuple(required_paths),
    )
    return CopyFrom(source, action)


def merge(states: Iterable[State], *, metadata: OpMetadata | None = None) -> State:
    """The states' filesystems stacked in order; scratch states add nothing."""
    given = list(states)
    layers = [state for state in given if not state.is_scratch]
    settings = given[0]._settings if given else _Settings()
    if not layers:
        return State(None, settings)
    if len(layers) == 1:
        return State(layers[0]._output, settings)
    inputs = _Inputs()
    for state in layers:
        inputs.index(state)
    return State._from_op(Merge(), inputs.outputs, metadata, settings)


def diff(lower: State, upper: State, *, metadata: OpMetadata | None = None) -> State:
    """What changed from ``lower`` to ``upper``, as a filesystem of its own."""
    if lower.is_scratch and upper.is_scratch:
        return State(None, upper._settings)
    inputs = _Inputs()
    op = Diff(lower=inputs.index(lower), upper=inputs.index(upper))
    return State._from_op(op, inputs.outputs, metadata, upper._settings)


def marshal(state: State) -> Definition:
    """Serialise everything ``state`` depends on: inputs first, the root last."""
    if state._output is None:
        return Definition(ops=())
    marshaller = _Marshaller()
    root_digest = marshaller.add(state._output.node)
    assert marshaller.ops[-1][0] == root_digest
    return Definition(
        ops=tuple(data for _, data in marshaller.ops),
        metadata=marshaller.metadata,
        root_output=state._output.index,
    )


class _Marshaller:
    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes]] = []
        self.metadata: dict[str, OpMetadata] = {}
        self._digests: dict[int, str] = {}  # id(node) -> digest
        self._seen: set[str] = set()

    def add(self, root: _Node) -> str:
        # Iterative post-order, so a long chain of steps cannot hit the recursion limit.
        stack: list[tuple[_Node, bool]] = [(root, False)]
        while stack:
            node, inputs_done = stack.pop()
            if id(node) in self._digests:
                continue
            if not inputs_done:
                stack.append((node, True))
                stack.extend((s.node, False) for s in reversed(node.sources))
                continue
            self._emit(node)
        return self._digests[id(root)]

    def _emit(self, node: _Node) -> None:
        inputs = tuple(Input(self._digests[id(s.node)], s.index) for s in node.sources)
        data = encode_op(replace(node.op, inputs=inputs))
        digest = digest_of(data)
        self._digests[id(node)] = digest
        if digest not in self._seen:
            self._seen.add(digest)
            self.ops.append((digest, data))
        self._merge_metadata(digest, node.metadata)

    def _merge_metadata(self, digest: str, metadata: OpMetadata) -> None:
        # Two steps that are the same op share a vertex: the first description wins, but
        # ignore_cache from either holds, since dropping it would serve a stale result.
        current = self.metadata.get(digest)
        if current is None:
            if metadata != OpMetadata():
                self.metadata[digest] = metadata
        elif metadata.ignore_cache and not current.ignore_cache:
            self.metadata[digest] = replace(current, ignore_cache=True)
