"""ARG scoping, variable expansion and stage resolution: Dockerfile → :class:`BuildPlan`.

Scoping follows the Dockerfile reference:

* ARGs before the first FROM are *global*: usable in FROM lines, and inside a stage
  only after the stage re-declares them (``ARG NAME`` without a default).
* Inside a stage, ARG and ENV values apply from the line after their declaration;
  ENV always wins over an ARG of the same name.
* ``--build-arg`` overrides the default of a declared ARG; build args nobody
  declares are reported in :attr:`BuildPlan.unused_build_args`.
* The platform args (``TARGETPLATFORM``...) are in the global scope automatically and
  in a stage once declared. Proxy args (``HTTP_PROXY``...) need no declaration, reach
  RUN steps only, and must stay out of cache keys and history
  (:attr:`BuildPlan.proxy_env`).

Expansion applies to ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME,
WORKDIR, ARG defaults and RUN ``--mount`` values. RUN/CMD/ENTRYPOINT command text,
SHELL, HEALTHCHECK and ONBUILD are left as written.

ONBUILD triggers of the base (an image's, given by the caller, or a stage's of this
Dockerfile) become the first steps of the stage built on it.

Only the stages the target needs (through FROM, ``COPY --from`` and ``RUN --mount
from=``) are expanded, so a broken unused stage does not fail the build.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from lazybuild.errors import UsageError
from lazybuild.frontend.dockerfile.instructions import (
    Arg,
    ArgDeclaration,
    Copy,
    Env,
    Instruction,
    KeyValue,
    Location,
    Onbuild,
    Run,
    parse_instruction,
    parse_stages,
)
from lazybuild.frontend.dockerfile.parser import Directives, Dockerfile, ParseError, parse
from lazybuild.frontend.dockerfile.shell import ExpansionError, Lexer
from lazybuild.frontend.dockerfile.suggest import did_you_mean
from lazybuild.oci.platform import Platform, host_platform

__all__ = [
    "PLATFORM_ARGS",
    "PROXY_ARGS",
    "BaseRef",
    "BuildPlan",
    "ImageEnvResolver",
    "ResolvedStage",
    "Step",
    "plan_build",
    "platform_args",
]

PROXY_ARGS = frozenset(
    {
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "FTP_PROXY",
        "ftp_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    }
)
PLATFORM_ARGS = (
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
)
# The five proxy variables; a RUN step gets each in both spellings (upper case first).
_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")

# (image reference, platform or None) -> the image config's Env as (name, value) pairs.
ImageEnvResolver = Callable[[str, str | None], Iterable[tuple[str, str]]]
# (image reference, platform) -> that image's ONBUILD triggers, as written.
ImageTriggersResolver = Callable[[str, str | None], Sequence[str]]


@dataclass(frozen=True)
class BaseRef:
    """What a FROM, ``COPY --from`` or mount ``from=`` points at.

    ``kind == "stage"`` carries the stage's index; ``ref`` is then its name (or index).
    """

    kind: Literal["image", "stage", "scratch", "context"]
    ref: str
    stage_index: int | None = None


@dataclass(frozen=True)
class Step:
    """One expanded instruction and what its execution needs besides it.

    ``build_args`` are the ARG values in scope (minus names an ENV overrides): RUN sees
    them as environment variables, but they never enter the image config.
    ``copy_from`` resolves ``COPY --from``; ``mount_from`` has one entry per RUN mount
    (``None`` = the build context for bind mounts, nothing for the other types).
    """

    instruction: Instruction
    build_args: tuple[KeyValue, ...] = ()
    copy_from: BaseRef | None = None
    mount_from: tuple[BaseRef | None, ...] = ()


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with its words expanded. ``platform`` None means the build's target platform.

    ``env`` is the environment at the end of the stage as far as the frontend knows it
    (the base image's env comes from the ``image_env`` callback, else it is empty).
    """

    index: int
    name: str | None
    base: BaseRef
    platform: str | None
    steps: tuple[Step, ...]
    dependencies: tuple[int, ...]
    env: tuple[KeyValue, ...]
    location: Location


@dataclass(frozen=True)
class BuildPlan:
    """The stages the target needs, dependencies first; the target is the last one."""

    stages: tuple[ResolvedStage, ...]
    global_args: tuple[KeyValue, ...]
    unused_build_args: tuple[str, ...]
    proxy_env: tuple[KeyValue, ...]
    directives: Directives
    # BUILDKIT_SANDBOX_HOSTNAME: the host name RUN steps see ("" = the default).
    hostname: str = ""
    # How many stages the Dockerfile has, needed or not.
    stage_count: int = 0

    @property
    def target(self) -> ResolvedStage:
        return self.stages[-1]

    def stage(self, index: int) -> ResolvedStage:
        for stage in self.stages:
            if stage.index == index:
                return stage
        raise KeyError(index)

    def image_lines(self) -> dict[str, int]:
        """Each registry image the plan uses, with the first Dockerfile line that names
        it (a FROM, a ``COPY --from`` or a mount's ``from=``): where BuildKit reports a
        failure to resolve it."""
        lines: dict[str, int] = {}
        for stage in self.stages:
            named = [(stage.base, stage.location.start_line)]
            for step in stage.steps:
                line = step.instruction.location.start_line
                named += [(ref, line) for ref in (step.copy_from, *step.mount_from) if ref]
            for ref, line in named:
                if ref.kind == "image" and ref.ref not in lines:
                    lines[ref.ref] = line
        return lines


def platform_args(target: Platform, build: Platform) -> dict[str, str]:
    """The predefined platform ARG values for a build."""
    return {
        "TARGETPLATFORM": str(target),
        "TARGETOS": target.os,
        "TARGETARCH": target.architecture,
        "TARGETVARIANT": target.variant,
        "BUILDPLATFORM": str(build),
        "BUILDOS": build.os,
        "BUILDARCH": build.architecture,
        "BUILDVARIANT": build.variant,
    }


class _Expander:
    """WordExpander over one scope; turns expansion errors into errors with a line."""

    def __init__(self, lexer: Lexer, scope: Mapping[str, str], line: int, filename: str) -> None:
        self.lexer = lexer
        # BuildKit expands heredoc bodies with quotes as plain text (`'${N}'` expands) and
        # always with `\\` as the escape, so `\$` keeps a dollar.
        self.heredoc_lexer = Lexer("\\", quotes_are_text=True)
        self.scope = scope
        self.line = line
        self.filename = filename

    def word(self, text: str) -> str:
        try:
            return self.lexer.process_word(text, self.scope)
        except ExpansionError as error:
            raise ParseError(str(error), self.line, self.filename) from None

    def words(self, text: str) -> list[str]:
        try:
            return self.lexer.process_words(text, self.scope)
        except ExpansionError as error:
            raise ParseError(str(error), self.line, self.filename) from None

    def heredoc(self, text: str) -> str:
        try:
            return self.heredoc_lexer.process_word(text, self.scope)
        except ExpansionError as error:
            raise ParseError(str(error), self.line, self.filename) from None


class _Planner:
    def __init__(
        self,
        dockerfile: Dockerfile,
        build_args: Mapping[str, str],
        predefined: Mapping[str, str],
        image_env: ImageEnvResolver | None,
        *,
        image_triggers: ImageTriggersResolver | None = None,
        target: str | None = None,
        named_contexts: Mapping[str, str] | None = None,
    ) -> None:
        self.dockerfile = dockerfile
        self.image_triggers = image_triggers
        self.named_contexts = dict(named_contexts or {})
        self.filename = dockerfile.filename
        self.lexer = Lexer(dockerfile.escape)
        self.build_args = dict(build_args)
        self.predefined = dict(predefined)
        self.image_env = image_env
        self.declared: set[str] = set()
        global_arg_instructions, self.stages = parse_stages(dockerfile)
        # BuildKit's TARGETSTAGE: the --target given, else the last stage's name.
        self.predefined.setdefault("TARGETSTAGE", target or self.stages[-1].name or "default")
        self.global_values = self._declare_globals(global_arg_instructions)
        self.resolved: dict[int, ResolvedStage] = {}
        self.stage_names: dict[str, int] = {}
        for stage in self.stages:
            if stage.name is None:
                continue
            if stage.name in self.stage_names:
                raise ParseError(
                    f"duplicate stage name {stage.name!r}", stage.location.start_line, self.filename
                )
            self.stage_names[stage.name] = stage.index

    def _arg_value(
        self, declaration: ArgDeclaration, expander: _Expander, inherited: Mapping[str, str]
    ) -> str | None:
        self.declared.add(declaration.name)
        if declaration.name in self.build_args:
            return self.build_args[declaration.name]
        if declaration.default is not None:
            return expander.word(declaration.default)
        if declaration.name in self.predefined:
            return self.predefined[declaration.name]
        return inherited.get(declaration.name)

    def _declare_globals(self, instructions: Iterable[Arg]) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in instructions:
            for declaration in instruction.declarations:
                scope = {**self.predefined, **values}
                expander = _Expander(
                    self.lexer, scope, instruction.location.start_line, self.filename
                )
                value = self._arg_value(declaration, expander, {})
                if value is None:
                    values.pop(declaration.name, None)
                else:
                    values[declaration.name] = value
        return values

    def stage_ref(self, text: str, current: int, *, earlier_only: bool) -> BaseRef:
        """Resolve a stage name (case-insensitive) or index; anything else is an image.
        A named context (``--build-context``) of that name wins, over a stage too."""
        named = self.named_contexts.get(text)
        if named is not None:
            return _named_context_ref(named)
        if text.isdigit():
            index = int(text)
            if index >= len(self.stages) or (earlier_only and index >= current):
                raise ParseError(
                    f"stage index {index} is not a previous stage",
                    self.stages[current].location.start_line,
                    self.filename,
                )
            return BaseRef("stage", text, index)
        index_by_name = self.stage_names.get(text.lower())
        if index_by_name is not None and (not earlier_only or index_by_name < current):
            return BaseRef("stage", text.lower(), index_by_name)
        if text.lower() == "scratch":
            return BaseRef("scratch", "scratch")
        return BaseRef("image", text)

    def resolve(self, index: int) -> ResolvedStage:
        if index in self.resolved:
            return self.resolved[index]
        stage = self.stages[index]
        line = stage.location.start_line
        from_scope = {**self.predefined, **self.global_values}
        from_instruction = stage.from_instruction.expand(
            _Expander(self.lexer, from_scope, line, self.filename)
        )
        if not from_instruction.base:
            raise ParseError(f"base name ({stage.base}) should not be blank", line, self.filename)
        base = self.stage_ref(from_instruction.base, index, earlier_only=True)
        platform = from_instruction.platform or None
        env: dict[str, str] = {}
        if base.kind == "stage" and base.stage_index is not None:
            parent = self.resolve(base.stage_index)
            env = {pair.key: pair.value for pair in parent.env}
            platform = platform or parent.platform
        elif base.kind == "image" and self.image_env is not None:
            env = dict(self.image_env(base.ref, platform))
        args: dict[str, str] = {}
        steps: list[Step] = []
        dependencies: set[int] = set()
        if base.stage_index is not None:
            dependencies.add(base.stage_index)
        commands = list(stage.commands)
        if base.kind == "image" and self.image_triggers is not None:
            # A base image's ONBUILD triggers run first, as if written after FROM.
            commands[:0] = self._triggers(self.image_triggers(base.ref, platform), line)
        elif base.kind == "stage" and base.stage_index is not None:
            # So do a base stage's (BuildKit since Dockerfile 1.12); its own triggers only,
            # since those it inherited fired in it.
            origin = f"of stage {base.ref}"
            commands[:0] = self._triggers(self._stage_triggers(base.stage_index), line, origin)
        for instruction in commands:
            step = self._step(instruction, index, args, env)
            steps.append(step)
            for ref in (step.copy_from, *step.mount_from):
                if ref is not None and ref.stage_index is not None:
                    dependencies.add(ref.stage_index)
        resolved = ResolvedStage(
            index=index,
            name=stage.name,
            base=base,
            platform=platform,
            steps=tuple(steps),
            dependencies=tuple(sorted(dependencies)),
            env=tuple(KeyValue(key, value) for key, value in env.items()),
            location=stage.location,
        )
        self.resolved[index] = resolved
        return resolved

    def _stage_triggers(self, index: int) -> list[str]:
        parent = self.resolve(index)
        return [
            step.instruction.expression
            for step in parent.steps
            if isinstance(step.instruction, Onbuild)
        ]

    def _triggers(
        self, triggers: Sequence[str], line: int, origin: str = "of the base image"
    ) -> list[Instruction]:
        """Parse the base's triggers; errors point at the FROM line and say whose they are."""
        instructions = []
        for trigger in triggers:
            try:
                parsed = parse(trigger, filename=self.filename)
            except ParseError as error:
                raise ParseError(
                    f"ONBUILD trigger {trigger!r} {origin}: {error.message}",
                    line,
                    self.filename,
                ) from None
            for node in parsed.nodes:
                located = replace(node, start_line=line, end_line=line)
                try:
                    instructions.append(parse_instruction(located, self.dockerfile.escape))
                except ParseError as error:
                    raise ParseError(
                        f"ONBUILD trigger {trigger!r} {origin}: {error.message}",
                        line,
                        self.filename,
                    ) from None
        return instructions

    def _step(
        self, instruction: Instruction, index: int, args: dict[str, str], env: dict[str, str]
    ) -> Step:
        """Expand one instruction and update the stage's ARG/ENV scope (in place)."""
        expander = _Expander(
            self.lexer, {**args, **env}, instruction.location.start_line, self.filename
        )
        build_args = tuple(KeyValue(k, v) for k, v in args.items() if k not in env)
        if isinstance(instruction, Arg):
            declarations = []
            for declaration in instruction.declarations:
                # Each declaration sees the ones before it on the same line.
                expander.scope = {**args, **env}
                value = self._arg_value(declaration, expander, self.global_values)
                if value is None:
                    args.pop(declaration.name, None)
                else:
                    args[declaration.name] = value
                declarations.append(ArgDeclaration(declaration.name, value))
            return Step(replace(instruction, declarations=tuple(declarations)), build_args)
        try:
            expanded = instruction.expand(expander)
        except ParseError as error:
            # Errors from re-reading RUN --mount values know the line but not the file.
            raise ParseError(error.message, error.line, self.filename) from None
        if isinstance(expanded, Env):
            env.update((pair.key, pair.value) for pair in expanded.pairs)
        copy_from = None
        if isinstance(expanded, Copy) and expanded.from_ is not None:
            copy_from = self.stage_ref(expanded.from_, index, earlier_only=False)
            self._check_not_self(copy_from, index, expanded)
        mount_from: tuple[BaseRef | None, ...] = ()
        if isinstance(expanded, Run):
            refs = []
            for mount in expanded.mounts:
                ref = None
                if mount.from_ is not None:
                    ref = self.stage_ref(mount.from_, index, earlier_only=False)
                    self._check_not_self(ref, index, expanded)
                refs.append(ref)
            mount_from = tuple(refs)
        return Step(expanded, build_args, copy_from, mount_from)

    def _check_copy_order(self, stage: ResolvedStage) -> None:
        """BuildKit builds stages in the order they are written: ``COPY --from`` may name
        only an earlier one (checked after cycles, which BuildKit reports first)."""
        for step in stage.steps:
            ref, ins = step.copy_from, step.instruction
            if ref is None or ref.stage_index is None or ref.stage_index < stage.index:
                continue
            assert isinstance(ins, Copy)
            name = stage.name or f"stage-{stage.index}"
            raise ParseError(
                f'cannot copy from stage "{ins.from_}", it needs to be defined before '
                f'current stage "{name}"',
                ins.location.start_line,
                self.filename,
            )

    def _check_not_self(self, ref: BaseRef, index: int, instruction: Instruction) -> None:
        if ref.stage_index == index:
            raise ParseError(
                f"circular dependency detected on stage: {ref.ref}",
                instruction.location.start_line,
                self.filename,
            )

    def target_index(self, target: str | None) -> int:
        if target is None:
            return len(self.stages) - 1
        index = self.stage_names.get(target.lower())
        if index is None:
            message = f"target stage {target!r} could not be found in {self.filename}"
            raise UsageError(did_you_mean(message, target, self.stage_names))
        return index

    def plan(self, target: str | None) -> BuildPlan:
        target_index = self.target_index(target)
        order: list[int] = []
        visiting: set[int] = set()

        def visit(index: int) -> None:
            if index in order:
                return
            if index in visiting:
                stage = self.stages[index]
                raise ParseError(
                    f"circular dependency detected on stage: {stage.name or index}",
                    stage.location.start_line,
                    self.filename,
                )
            visiting.add(index)
            for dependency in self.resolve(index).dependencies:
                visit(dependency)
            visiting.discard(index)
            order.append(index)

        visit(target_index)
        for index in order:
            self._check_copy_order(self.resolved[index])
        unused = sorted(
            name
            for name in self.build_args
            if name not in self.declared
            and name.upper() not in _PROXY_NAMES
            and name not in (*PLATFORM_ARGS, "TARGETSTAGE", HOSTNAME_ARG)
        )
        proxy_env = _proxy_env(self.build_args)
        return BuildPlan(
            stages=tuple(self.resolved[index] for index in order),
            global_args=tuple(KeyValue(k, v) for k, v in self.global_values.items()),
            unused_build_args=tuple(unused),
            proxy_env=proxy_env,
            directives=self.dockerfile.directives,
            hostname=self.build_args.get(HOSTNAME_ARG, ""),
            stage_count=len(self.stages),
        )


# The build arg BuildKit's Dockerfile frontend reads as the RUN steps' host name.
HOSTNAME_ARG = "BUILDKIT_SANDBOX_HOSTNAME"


def _proxy_env(build_args: Mapping[str, str]) -> tuple[KeyValue, ...]:
    """Each proxy variable given in either spelling, set in both, as BuildKit's ProxyEnv.

    Names match whatever their case; when both spellings are given, the one sorting last
    (lower case) wins, since BuildKit reads them in sorted order; an empty value sets
    nothing.
    """
    values: dict[str, str] = {}
    for name in sorted(build_args):
        if name.upper() in _PROXY_NAMES:
            values[name.upper()] = build_args[name]
    return tuple(
        KeyValue(spelling, values[name])
        for name in _PROXY_NAMES
        if values.get(name)
        for spelling in (name, name.lower())
    )


NAMED_IMAGE_PREFIX = "docker-image://"
NAMED_LOCAL_PREFIX = "local:"


def _named_context_ref(value: str) -> BaseRef:
    """``docker-image://REF`` is that image; ``local:SOURCE`` the local source SOURCE."""
    if value.startswith(NAMED_IMAGE_PREFIX):
        return BaseRef("image", value.removeprefix(NAMED_IMAGE_PREFIX))
    return BaseRef("context", value.removeprefix(NAMED_LOCAL_PREFIX))


def plan_build(
    dockerfile: Dockerfile | bytes | str,
    *,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    target_platform: Platform | None = None,
    build_platform: Platform | None = None,
    image_env: ImageEnvResolver | None = None,
    image_triggers: ImageTriggersResolver | None = None,
    filename: str = "Dockerfile",
    named_contexts: Mapping[str, str] | None = None,
) -> BuildPlan:
    """Parse (if needed), scope ARGs, expand words and pick the stages ``target`` needs.

    ``named_contexts`` (``--build-context``): by name, ``docker-image://REF`` or
    ``local:SOURCE``; a FROM, ``COPY --from`` or mount ``from=`` naming one gets it.

    Platforms default to the host's. ``image_env`` lets the caller supply a base
    image's ENV (BuildKit reads the image config for this): ``FROM golang`` then
    ``WORKDIR $GOPATH`` needs it. Raises :class:`ParseError` naming the line.
    """
    if not isinstance(dockerfile, Dockerfile):
        dockerfile = parse(dockerfile, filename=filename)
    build = build_platform or host_platform()
    predefined = platform_args(target_platform or build, build)
    planner = _Planner(
        dockerfile,
        build_args or {},
        predefined,
        image_env,
        image_triggers=image_triggers,
        target=target,
        named_contexts=named_contexts,
    )
    return planner.plan(target)
