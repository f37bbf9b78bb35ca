"""``BuildPlan`` → build graph, in the manner of buildkit's dockerfile2llb.

Pure: the base images' configs come from the caller (``base_config``), nothing is read
or run. Every stage becomes a ``State`` plus an ``ImageConfigState``; the target stage's
state is marshalled into the ``Definition`` and its config is the image's.

Mapping: FROM image → an image source with the image's env, workdir and user; RUN →
an exec op (shell form through SHELL, build args as env, proxy args in ``proxy_env``,
``--mount`` as exec mounts); COPY/ADD → file op copies with Docker's destination rules
(``--link``: onto scratch, then merged); WORKDIR → mkdir; everything else changes the
config only. Each op's metadata names the stage, the step and the Dockerfile lines.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

from lazybuild.frontend.dockerfile.imageconfig import (
    DEFAULT_PATH,
    HISTORY_COMMENT,
    HealthConfig,
    HistoryEntry,
    ImageConfigState,
)
from lazybuild.frontend.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    Healthcheck,
    Instruction,
    Label,
    Location,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    ShellForm,
    ShellOrExec,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from lazybuild.frontend.dockerfile.mounts import RunMount as DockerfileMount
from lazybuild.frontend.dockerfile.parser import ParseError
from lazybuild.frontend.dockerfile.stages import BaseRef, BuildPlan, ResolvedStage, Step
from lazybuild.graph import (
    ChownOpt,
    Definition,
    Mkdir,
    Mkfile,
    OpMetadata,
    RunMount,
    SecretEnv,
    SourceLocation,
    State,
    copy,
    marshal,
    merge,
)
from lazybuild.oci.platform import host_platform

__all__ = [
    "DEFAULT_SHELL",
    "BaseConfigResolver",
    "GraphResult",
    "ImageConfigState",
    "plan_to_graph",
]

DEFAULT_SHELL = ("/bin/sh", "-c")
# (image reference, platform) -> that image's config (ImageConfigState or OCI JSON).
BaseConfigResolver = Callable[[str, str], "ImageConfigState | Mapping[str, Any]"]


@dataclass(frozen=True)
class GraphResult:
    """The target's graph, its image config, and every converted stage's state."""

    definition: Definition
    config: ImageConfigState
    stage_states: dict[int, State]
    target_state: State


@dataclass(frozen=True)
class _StageResult:
    state: State
    config: ImageConfigState


def plan_to_graph(
    plan: BuildPlan,
    *,
    base_config: BaseConfigResolver,
    context_name: str = "context",
    context_excludes: Sequence[str] = (),
    target_platform: str | None = None,
    filename: str = "Dockerfile",
    no_cache_stages: Sequence[str] = (),
) -> GraphResult:
    """Convert ``plan`` (dependencies first, target last) into a graph.

    ``no_cache_stages`` (``--no-cache-filter``): every step of a stage of one of these
    names (any case, as BuildKit compares them) ignores the cache; unknown names and
    unnamed stages are passed over, as in BuildKit.

    ``context_excludes`` are the ``.dockerignore`` patterns for the context source;
    ``target_platform`` (default: the host's) is the platform of stages without
    ``FROM --platform``. Errors are ``ParseError`` naming ``filename`` and the line.
    """
    converter = _Converter(
        plan,
        base_config=base_config,
        context=State.local(context_name, exclude_patterns=context_excludes),
        platform=target_platform or str(host_platform()),
        filename=filename,
        no_cache_stages=no_cache_stages,
    )
    for stage in plan.stages:
        converter.convert(stage)
    target = converter.results[plan.target.index]
    return GraphResult(
        definition=marshal(target.state),
        config=target.config,
        stage_states={index: result.state for index, result in converter.results.items()},
        target_state=target.state,
    )


def _with_settings(state: State, config: ImageConfigState, extra_env: Sequence[str] = ()) -> State:
    """``state`` with its env, dir and user taken from ``config`` (plus ``extra_env``)."""
    for key in [item.partition("=")[0] for item in state.env]:
        state = state.without_env(key)
    for item in (*config.env, *extra_env):
        key, _, value = item.partition("=")
        state = state.with_env(key, value)
    return state.with_dir(config.workdir or "/").with_user(config.user)


def _parse_chown(chown: str | None) -> ChownOpt | None:
    if not chown:
        return None
    user, sep, group = chown.partition(":")
    return ChownOpt(user=user, group=group if sep and group else None)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _is_git(source: str) -> bool:
    return source.startswith("git@") or (
        _is_url(source) and urlparse(source).path.rstrip("/").endswith(".git")
    )


def _parents_selection(src: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``COPY --parents`` as BuildKit copies it: (source, include patterns, required paths).

    The part before a ``/./`` pivot (``/`` without one) is the source, wildcards and all;
    the rest is the one include pattern below it, so its path is kept. A source without
    wildcards must exist; with wildcards, matching nothing copies nothing.
    """
    pivot, sep, rest = src.partition("/./")
    source, pattern = (pivot or "/", rest) if sep else ("/", src)
    pattern = posixpath.normpath("/" + pattern).lstrip("/")
    if _has_wildcard(source) or _has_wildcard(pattern):
        return source, (pattern,), ()
    return source, (pattern,), (posixpath.join(source, pattern),)


def _has_wildcard(path: str) -> bool:
    return any(char in path for char in "*?[")


# Digest algorithms and their hex lengths, as go-digest (BuildKit's checksum parser) has them.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def checksum_problem(checksum: str) -> str | None:
    """Why ``ADD --checksum`` cannot be a digest (go-digest's wording), or None if it is.

    BuildKit parses the checksum before fetching anything, so a malformed one fails the
    build without a download.
    """
    algorithm, sep, encoded = checksum.partition(":")
    if not sep or not algorithm or not encoded:
        return "invalid checksum digest format"
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return "unsupported digest algorithm"
    if len(encoded) != length:
        return "invalid checksum digest length"
    if any(char not in "0123456789abcdef" for char in encoded):
        return "invalid checksum digest format"
    return None


def _normalize_port(port: str) -> list[str]:
    number, _, proto = port.partition("/")
    proto = (proto or "tcp").lower()
    start, dash, end = number.partition("-")
    if dash and start.isdigit() and end.isdigit() and int(start) <= int(end):
        return [f"{value}/{proto}" for value in range(int(start), int(end) + 1)]
    return [f"{number}/{proto}"]


def _url_filename(source: str) -> str:
    """The file an ``ADD <url>`` writes: the URL path's last element, as BuildKit names it;
    ``__unnamed__`` when the path has none (``/`` or empty)."""
    base = posixpath.basename(urlparse(source).path.rstrip("/"))
    return base if base not in ("", ".") else "__unnamed__"


def _from_is_step(stage: ResolvedStage) -> bool:
    return stage.base.kind not in ("scratch", "stage")


def _is_numbered(ins: Instruction, config: ImageConfigState) -> bool:
    """Whether ``ins`` makes a vertex of its own, and so takes a step number."""
    if isinstance(ins, Workdir):
        return posixpath.normpath(posixpath.join(config.workdir or "/", ins.path)) != "/"
    return isinstance(ins, Run | Copy | Add)


def _step_text(ins: Instruction) -> str:
    """A step's name as BuildKit shows it: the instruction as written with its keyword
    in upper case; a RUN whose command is one heredoc adds the body's first line."""
    parts = ins.original.split(None, 1)
    text = " ".join([parts[0].upper(), *parts[1:]]) if parts else ins.keyword
    script = ins.heredoc_script if isinstance(ins, Run) else None
    if script is not None:
        lines = script.content.strip().split("\n")
        text += f" ({lines[0]}{'...' if len(lines) > 1 else ''})"
    return text


def _is_trigger(stage: ResolvedStage, step: Step) -> bool:
    """A base's ONBUILD trigger fired in ``stage``: the planner puts those first, located
    at the FROM line, where no instruction of the stage itself can be."""
    return step.instruction.location.start_line == stage.location.start_line


def _step_total(stage: ResolvedStage) -> int:
    """BuildKit's step count for a stage: its FROM when that is an image, then every RUN,
    COPY, ADD and WORKDIR (counted even when the WORKDIR turns out to be "/"), and every
    fired ONBUILD trigger, whatever its instruction."""
    counted = sum(
        _is_trigger(stage, s) or isinstance(s.instruction, Run | Copy | Add | Workdir)
        for s in stage.steps
    )
    return counted + (1 if _from_is_step(stage) else 0)


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class _Converter:
    def __init__(
        self,
        plan: BuildPlan,
        *,
        base_config: BaseConfigResolver,
        context: State,
        platform: str,
        filename: str,
        no_cache_stages: Sequence[str] = (),
    ) -> None:
        self.plan = plan
        self.no_cache_stages = frozenset(name.lower() for name in no_cache_stages)
        self.base_config = base_config
        self.context = context
        self.platform = platform
        self.filename = filename
        self.results: dict[int, _StageResult] = {}
        self.stage_platform = platform
        self.proxy_env = tuple(f"{kv.key}={kv.value}" for kv in plan.proxy_env)
        # BuildKit leaves a stage unnamed in step names when it is the only one: the
        # Dockerfile has one stage and copies or mounts no image (each such image is a
        # stage of its own to BuildKit; those of fired triggers come later and do not
        # count).
        self.single_stage = plan.stage_count == 1 and not any(
            ref is not None and ref.kind == "image"
            for stage in plan.stages
            for step in stage.steps
            if not _is_trigger(stage, step)
            for ref in (step.copy_from, *step.mount_from)
        )
        # The ARG names the stage being converted has declared so far, in order.
        self.declared_args: dict[str, None] = {}

    # Helpers.

    def error(self, instruction: Instruction | ResolvedStage, message: str) -> ParseError:
        return ParseError(message, instruction.location.start_line, self.filename)

    def metadata(
        self, stage: ResolvedStage, position: int, text: str, lines: Location
    ) -> OpMetadata:
        name = stage.name or f"stage-{stage.index}"
        if self.single_stage:
            name = ""  # as BuildKit: the only stage goes unnamed, "[1/2] FROM ..."
        total = _step_total(stage)
        summary = " ".join(text.split())
        return OpMetadata(
            description=f"[{name}{' ' if name else ''}{position}/{total}] {summary}",
            ignore_cache=bool(stage.name) and str(stage.name).lower() in self.no_cache_stages,
            source_locations=(SourceLocation(self.filename, lines.start_line, lines.end_line),),
        )

    def image_config(self, ref: str, platform: str) -> ImageConfigState:
        config = self.base_config(ref, platform)
        if isinstance(config, ImageConfigState):
            return config
        return ImageConfigState.from_oci_config(config)

    def source_state(self, ref: BaseRef | None, where: Instruction) -> State:
        """The filesystem a ``--from``/``from=`` names (None: the build context)."""
        if ref is None:
            return self.context
        if ref.kind == "stage":
            assert ref.stage_index is not None
            if ref.stage_index not in self.results:
                raise self.error(where, f"stage {ref.ref!r} is not built before this step")
            return self.results[ref.stage_index].state
        if ref.kind == "scratch":
            return State.scratch()
        if ref.kind == "context":
            return State.local(ref.ref)
        return State.image(ref.ref, self.stage_platform)

    # Stages.

    def convert(self, stage: ResolvedStage) -> None:
        platform = stage.platform or self.platform
        self.stage_platform = platform
        base = stage.base
        from_text = f"FROM {base.ref}"
        # As BuildKit numbers steps: a FROM of an image is step 1; FROM scratch and FROM
        # <stage> make no vertex and are not counted. Only the instructions that make a
        # vertex (RUN, COPY, ADD, WORKDIR other than "/") take a number.
        # The base image's vertex is shared by every stage FROM it: ignoring its cache
        # would rerun those too. The stage's first step reruns, and all after it.
        from_meta = replace(self.metadata(stage, 1, from_text, stage.location), ignore_cache=False)
        position = 1 if _from_is_step(stage) else 0
        self.declared_args = {}
        if base.kind == "stage":
            assert base.stage_index is not None
            parent = self.results.get(base.stage_index)
            if parent is None:
                raise self.error(stage, f"stage {base.ref!r} is not built before this stage")
            # CMD-set-in-this-stage does not carry over: a child's ENTRYPOINT drops it. The
            # parent's ONBUILD triggers ran as this stage's first steps: not passed on.
            state, cmd_set = parent.state, False
            config = replace(parent.config, onbuild=())
        elif base.kind == "scratch":
            # BuildKit's empty image has the default PATH and WorkingDir "/", and images
            # built on it keep them.
            config = ImageConfigState(env=(f"PATH={DEFAULT_PATH}",), workdir="/")
            state, cmd_set = State.scratch(), False
        elif base.kind == "context":
            state = State.local(base.ref, metadata=from_meta)
            config, cmd_set = ImageConfigState(), False
        else:
            # The base's ONBUILD triggers ran as this stage's first steps (the planner put
            # them there); they are not passed on.
            config = replace(self.image_config(base.ref, platform), onbuild=())
            state, cmd_set = State.image(base.ref, platform, metadata=from_meta), False
        for step in stage.steps:
            if _is_numbered(step.instruction, config):
                position += 1
            text = _step_text(step.instruction)
            if _is_trigger(stage, step):
                text = f"ONBUILD {text}"  # as BuildKit names a fired trigger's step
            meta = self.metadata(stage, position, text, step.instruction.location)
            state, config, cmd_set = self.step(
                step, state=state, config=config, cmd_set=cmd_set, meta=meta
            )
        self.results[stage.index] = _StageResult(_with_settings(state, config), config)

    def step(
        self,
        step: Step,
        *,
        state: State,
        config: ImageConfigState,
        cmd_set: bool,
        meta: OpMetadata,
    ) -> tuple[State, ImageConfigState, bool]:
        ins = step.instruction
        shell = config.shell or DEFAULT_SHELL

        def history(created_by: str, *, empty: bool) -> tuple[HistoryEntry, ...]:
            return (*config.history, HistoryEntry(created_by, empty, HISTORY_COMMENT))

        def command(form: ShellOrExec) -> tuple[str, ...]:
            if isinstance(form, ShellForm):
                return (*shell, form.text)
            return form.args

        if isinstance(ins, Run):
            state, created_by = self.run(
                step, ins, state=state, config=config, shell=shell, meta=meta
            )
            return state, replace(config, history=history(created_by, empty=False)), cmd_set
        if isinstance(ins, Copy | Add):
            state = self.copy(step, ins, state, config, meta)
            sources = [*ins.sources, *(doc.name for doc in ins.heredocs)]
            created_by = f"{ins.keyword} {' '.join(sources)} {ins.dest} # buildkit"
            return state, replace(config, history=history(created_by, empty=False)), cmd_set
        if isinstance(ins, Workdir):
            workdir = posixpath.normpath(posixpath.join(config.workdir or "/", ins.path))
            config = replace(config, workdir=workdir)
            if workdir == "/":
                # As BuildKit: "/" always exists, so no mkdir and an empty layer.
                return state, replace(config, history=history("WORKDIR /", empty=True)), cmd_set
            chown = _parse_chown(config.user)
            state = _with_settings(state, config).file(
                Mkdir(path=workdir, mode=0o755, make_parents=True, chown=chown), metadata=meta
            )
            return (
                state,
                replace(config, history=history(f"WORKDIR {workdir}", empty=False)),
                cmd_set,
            )
        if isinstance(ins, Env):
            env = config
            for pair in ins.pairs:
                env = replace(env, env=env.with_env(pair.key, pair.value))
            text = " ".join(f"{p.key}={p.value}" for p in ins.pairs)
            return state, replace(env, history=history(f"ENV {text}", empty=True)), cmd_set
        if isinstance(ins, Arg):
            # The value each declaration gives (build arg, default or global value), as
            # the planner resolved it; the name alone when it has none.
            parts = [
                d.name if d.default is None else f"{d.name}={d.default}" for d in ins.declarations
            ]
            self.declared_args.update((d.name, None) for d in ins.declarations)
            return (
                state,
                replace(config, history=history(f"ARG {' '.join(parts)}", empty=True)),
                cmd_set,
            )
        if isinstance(ins, User):
            config = replace(config, user=ins.user)
            return state, replace(config, history=history(f"USER {ins.user}", empty=True)), cmd_set
        if isinstance(ins, Label):
            labeled = config
            for pair in ins.pairs:
                labeled = replace(labeled, labels=labeled.with_label(pair.key, pair.value))
            text = " ".join(f"{p.key}={p.value}" for p in ins.pairs)
            return state, replace(labeled, history=history(f"LABEL {text}", empty=True)), cmd_set
        if isinstance(ins, Maintainer):
            config = replace(config, author=ins.name)
            return (
                state,
                replace(config, history=history(f"MAINTAINER {ins.name}", empty=True)),
                cmd_set,
            )
        if isinstance(ins, Expose):
            ports = [port for raw in ins.ports for port in _normalize_port(raw)]
            config = replace(config, exposed_ports=_unique([*config.exposed_ports, *ports]))
            # BuildKit's text: the ports of this instruction, sorted, in brackets.
            text = f"EXPOSE [{' '.join(sorted(set(ports)))}]"
            return state, replace(config, history=history(text, empty=True)), cmd_set
        if isinstance(ins, Volume):
            config = replace(config, volumes=_unique([*config.volumes, *ins.paths]))
            text = f"VOLUME {json.dumps(list(ins.paths))}"
            return state, replace(config, history=history(text, empty=True)), cmd_set
        if isinstance(ins, StopSignal):
            config = replace(config, stop_signal=ins.signal)
            return (
                state,
                replace(config, history=history(f"STOPSIGNAL {ins.signal}", empty=True)),
                cmd_set,
            )
        if isinstance(ins, Entrypoint):
            args = command(ins.command)
            # As Docker: an ENTRYPOINT drops the CMD unless this stage set that CMD.
            config = replace(config, entrypoint=args, cmd=config.cmd if cmd_set else None)
            text = f"ENTRYPOINT {json.dumps(list(args))}"
            return state, replace(config, history=history(text, empty=True)), cmd_set
        if isinstance(ins, Cmd):
            args = command(ins.command)
            config = replace(config, cmd=args)
            return (
                state,
                replace(config, history=history(f"CMD {json.dumps(list(args))}", empty=True)),
                True,
            )
        if isinstance(ins, Shell):
            config = replace(config, shell=ins.args)
            text = f"SHELL {json.dumps(list(ins.args))}"
            return state, replace(config, history=history(text, empty=True)), cmd_set
        if isinstance(ins, Healthcheck):
            health = self.healthcheck(ins)
            config = replace(config, healthcheck=health)
            text = f"HEALTHCHECK {json.dumps(list(health.test))}"
            return state, replace(config, history=history(text, empty=True)), cmd_set
        if isinstance(ins, Onbuild):
            config = replace(config, onbuild=(*config.onbuild, ins.expression))
            return (
                state,
                replace(config, history=history(f"ONBUILD {ins.expression}", empty=True)),
                cmd_set,
            )
        raise self.error(ins, f"{ins.keyword} is not supported in a stage")

    @staticmethod
    def healthcheck(ins: Healthcheck) -> HealthConfig:
        if ins.test is None:
            return HealthConfig(test=("NONE",))
        if isinstance(ins.test, ShellForm):
            test: tuple[str, ...] = ("CMD-SHELL", ins.test.text)
        else:
            test = ("CMD", *ins.test.args)
        return HealthConfig(
            test=test,
            interval_ns=ins.interval_ns,
            timeout_ns=ins.timeout_ns,
            start_period_ns=ins.start_period_ns,
            start_interval_ns=ins.start_interval_ns,
            retries=ins.retries,
        )

    # RUN.

    def run(
        self,
        step: Step,
        ins: Run,
        *,
        state: State,
        config: ImageConfigState,
        shell: Sequence[str],
        meta: OpMetadata,
    ) -> tuple[State, str]:
        mounts: list[RunMount] = []
        script = ins.heredoc_script
        if isinstance(ins.command, ExecForm):
            args: tuple[str, ...] = ins.command.args
        elif script is not None and len(ins.heredocs) == 1 and script.body.startswith("#!"):
            # A script with its own interpreter: handed over as an executable file.
            pipes = State.scratch().file(
                Mkfile(path=f"/{script.name}", data=script.body.encode(), mode=0o755),
                metadata=meta,
            )
            mounts.append(RunMount(dest="/dev/pipes", source=pipes, readonly=True))
            args = (f"/dev/pipes/{script.name}",)
        elif script is not None and len(ins.heredocs) == 1:
            args = (*shell, script.body)
        elif ins.heredocs:
            args = (*shell, ins.shell_text_with_heredocs())
        else:
            args = (*shell, ins.command.text)
        workdir = config.workdir or "/"
        secret_env: list[SecretEnv] = []
        for index, mount in enumerate(ins.mounts):
            if mount.type == "secret" and mount.env:
                secret_env.append(
                    SecretEnv(name=mount.env, secret_id=mount.id or "", required=mount.required)
                )
                if mount.target is None:
                    continue  # env= alone: the secret is not a file as well
            source_ref = step.mount_from[index] if index < len(step.mount_from) else None
            mounts.append(self.run_mount(ins, mount, source_ref, workdir, index))
        if ins.security != "sandbox":
            raise self.error(ins, f"RUN --security={ins.security} is not supported")
        build_env = [f"{kv.key}={kv.value}" for kv in step.build_args]
        ssh = next((m for m in mounts if m.kind == "ssh"), None)
        if ssh is not None and config.get_env("SSH_AUTH_SOCK") is None:
            # As buildkit: the first ssh mount is the agent the process talks to.
            build_env.append(f"SSH_AUTH_SOCK={ssh.dest}")
        runner = _with_settings(state, config, build_env)
        if self.plan.hostname:
            runner = runner.with_hostname(self.plan.hostname)
        result = runner.run(
            args,
            mounts=mounts,
            network=ins.network if ins.network != "default" else None,
            proxy_env=self.proxy_env,
            secret_env=secret_env,
            metadata=meta,
        )
        prefix = ""
        if self.declared_args:
            # As BuildKit's history: every ARG the stage declared, in the order first
            # declared, with the value the step sees (an ENV of the same name wins; one
            # without a value is "name=").
            values = {kv.key: kv.value for kv in step.build_args}
            shown = [
                f"{name}={values.get(name, config.get_env(name) or '')}"
                for name in self.declared_args
            ]
            prefix = f"|{len(shown)} {' '.join(shown)} "
        return result.root(), f"RUN {prefix}{' '.join(args)} # buildkit"

    def run_mount(
        self,
        ins: Run,
        mount: DockerfileMount,
        source_ref: BaseRef | None,
        workdir: str,
        index: int,
    ) -> RunMount:
        def dest(default: str) -> str:
            target = mount.target or default
            return posixpath.normpath(posixpath.join(workdir, target))

        if mount.type == "bind":
            source = self.source_state(source_ref, ins)
            return RunMount(
                dest=dest("/"),
                source=source if not source.is_scratch else None,
                source_path=posixpath.join("/", mount.source or "/"),
                readonly=mount.readonly,
                # As BuildKit: what a step writes to a bind mount is thrown away.
                no_output=not mount.readonly,
            )
        if mount.type == "cache":
            seed = None
            if mount.from_ is not None:
                seed = self.source_state(source_ref, ins)
            return RunMount(
                dest=dest("/"),
                kind="cache",
                source=seed if seed is not None and not seed.is_scratch else None,
                source_path=posixpath.join("/", mount.source or "/"),
                cache_id=mount.id,
                sharing=mount.sharing or "shared",
                mode=mount.mode,
                uid=mount.uid,
                gid=mount.gid,
                readonly=mount.readonly,
            )
        if mount.type == "tmpfs":
            return RunMount(dest=dest("/"), kind="tmpfs", size=mount.size)
        if mount.type == "secret":
            return RunMount(
                dest=dest(f"/run/secrets/{mount.id}"),
                kind="secret",
                secret_id=mount.id,
                required=mount.required,
                mode=mount.mode if mount.mode is not None else 0o400,
                uid=mount.uid if mount.uid is not None else 0,
                gid=mount.gid if mount.gid is not None else 0,
            )
        # As BuildKit's llb: N counts the step's ssh mounts, not all its mounts.
        ssh_index = sum(1 for earlier in ins.mounts[:index] if earlier.type == "ssh")
        return RunMount(
            dest=dest(f"/run/buildkit/ssh_agent.{ssh_index}"),
            kind="ssh",
            secret_id=mount.id or "default",
            required=mount.required,
            mode=mount.mode if mount.mode is not None else 0o600,
            uid=mount.uid if mount.uid is not None else 0,
            gid=mount.gid if mount.gid is not None else 0,
        )

    # COPY / ADD.

    def copy(
        self,
        step: Step,
        ins: Copy | Add,
        state: State,
        config: ImageConfigState,
        meta: OpMetadata,
    ) -> State:
        workdir = config.workdir or "/"
        count = len(ins.sources) + len(ins.heredocs)
        if count == 0:
            raise self.error(ins, f"{ins.keyword} needs at least one source")
        raw_dest = ins.dest
        as_directory = raw_dest in ("", ".") or raw_dest.endswith(("/", "/."))
        if count > 1 and not as_directory:
            raise self.error(
                ins,
                f"When using {ins.keyword} with more than one source file, the destination "
                f"must be a directory and end with a / (got {raw_dest!r})",
            )
        dest = posixpath.normpath(posixpath.join(workdir, raw_dest))
        if as_directory and not dest.endswith("/"):
            dest += "/"
        chown = _parse_chown(ins.chown)
        chmod = ins.chmod
        is_add = isinstance(ins, Add)
        checksum = ins.checksum if isinstance(ins, Add) else None
        unpack = ins.unpack if isinstance(ins, Add) else None
        copy_from = step.copy_from if isinstance(ins, Copy) else None
        parents = isinstance(ins, Copy) and ins.parents
        source_state = self.source_state(copy_from, ins)
        if copy_from is not None and source_state.is_scratch:
            raise self.error(ins, f"{ins.keyword} --from={copy_from.ref}: the stage is empty")
        if checksum is not None and not all(_is_url(s) for s in ins.sources):
            raise self.error(ins, "ADD --checksum works only with HTTP(S) sources")
        if checksum is not None:
            problem = checksum_problem(checksum)
            if problem is not None:
                raise self.error(ins, f"ADD --checksum={checksum}: {problem}")

        steps = []
        for source in ins.sources:
            if is_add and _is_git(source):
                raise self.error(ins, f"ADD of a git repository is not supported yet: {source}")
            if is_add and _is_url(source):
                name = _url_filename(source)
                http = State.http(source, checksum=checksum, filename=name, metadata=meta)
                # A remote archive is unpacked only when asked (--unpack, Dockerfile 1.17),
                # and then into the destination, as a local one is.
                target = dest + name if as_directory and not unpack else dest
                steps.append(
                    copy(
                        http,
                        f"/{name}",
                        target,
                        attempt_unpack_docker_compatibility=bool(unpack),
                        create_dest_path=True,
                        chown=chown,
                        chmod=chmod,
                    )
                )
                continue
            src = posixpath.join("/", source)
            include: tuple[str, ...] = ()
            required: tuple[str, ...] = ()
            if parents:
                src, include, required = _parents_selection(src)
            steps.append(
                copy(
                    source_state,
                    src,
                    dest,
                    follow_symlinks=True,
                    dir_copy_contents=True,
                    attempt_unpack_docker_compatibility=(
                        unpack if unpack is not None else is_add and copy_from is None
                    ),
                    create_dest_path=True,
                    allow_wildcard=True,
                    allow_empty_wildcard=True,
                    chown=chown,
                    chmod=chmod,
                    include_patterns=include,
                    exclude_patterns=ins.exclude,
                    required_paths=required,
                )
            )
        for heredoc in ins.heredocs:
            mode = 0o644
            doc_state = State.scratch().file(
                Mkfile(path=f"/{heredoc.name}", data=heredoc.body.encode(), mode=mode),
                metadata=meta,
            )
            target = dest + heredoc.name if as_directory else dest
            steps.append(
                copy(
                    doc_state,
                    f"/{heredoc.name}",
                    target,
                    create_dest_path=True,
                    chown=chown,
                    chmod=chmod,
                )
            )
        if ins.link:
            linked = State.scratch().file(*steps, metadata=meta)
            return merge([state, linked], metadata=meta)
        return _with_settings(state, config).file(*steps, metadata=meta)
