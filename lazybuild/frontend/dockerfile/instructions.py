"""AST → typed, frozen instructions grouped into stages.

Each :class:`~.parser.Node` becomes one dataclass per instruction kind, with its
flags checked (unknown flags, missing values and wrong argument counts are errors
naming the line). Words are kept *unexpanded* here; :meth:`Instruction.expand`
returns a copy with variables substituted, applied by :mod:`.stages` where the
Dockerfile reference says an instruction supports expansion.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self, TypeAlias, TypedDict

from lazybuild.frontend.dockerfile.mounts import (
    MountSpecError,
    RunMount,
    check_mount_from_literal,
    parse_mount,
)
from lazybuild.frontend.dockerfile.parser import (
    INSTRUCTIONS,
    Dockerfile,
    Heredoc,
    Node,
    ParseError,
    parse_heredoc_marker,
)
from lazybuild.frontend.dockerfile.shell import ExpansionError, Lexer
from lazybuild.frontend.dockerfile.suggest import did_you_mean

__all__ = [
    "Add",
    "Arg",
    "ArgDeclaration",
    "Cmd",
    "Copy",
    "Entrypoint",
    "Env",
    "ExecForm",
    "Expose",
    "From",
    "Healthcheck",
    "Instruction",
    "KeyValue",
    "Label",
    "Location",
    "Maintainer",
    "Onbuild",
    "Run",
    "Shell",
    "ShellForm",
    "ShellOrExec",
    "Stage",
    "StopSignal",
    "User",
    "Volume",
    "WordExpander",
    "Workdir",
    "parse_instruction",
    "parse_stages",
]

NetworkMode = Literal["default", "none", "host"]
_NETWORK_MODES: dict[str, NetworkMode] = {"default": "default", "none": "none", "host": "host"}
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MIN_HEALTHCHECK_DURATION_NS = 1_000_000  # the reference's 1ms floor


class WordExpander(Protocol):
    """Expands words with the variables in scope (see :class:`.shell.Lexer`)."""

    def word(self, text: str) -> str:
        """One word: quotes removed, whitespace kept."""
        ...

    def words(self, text: str) -> list[str]:
        """Split into words after expansion (EXPOSE)."""
        ...

    def heredoc(self, text: str) -> str:
        """A heredoc body: variables expanded and escapes applied, quotes kept."""
        ...


@dataclass(frozen=True)
class Location:
    start_line: int
    end_line: int


@dataclass(frozen=True)
class ShellForm:
    """``RUN make all``: the text is handed to the stage's SHELL as one argument."""

    text: str


@dataclass(frozen=True)
class ExecForm:
    """``RUN ["make", "all"]``: argv as written, no shell and no expansion."""

    args: tuple[str, ...]


ShellOrExec: TypeAlias = ShellForm | ExecForm


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Common part of every instruction: where it is and how it was written."""

    location: Location
    original: str

    @property
    def keyword(self) -> str:
        return type(self).__name__.upper()

    def expand(self, expander: WordExpander) -> Self:
        """A copy with variables expanded; instructions without expansion return self."""
        return self


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    base: str
    stage_name: str | None
    platform: str | None

    def expand(self, expander: WordExpander) -> Self:
        platform = expander.word(self.platform) if self.platform is not None else None
        return dataclasses.replace(self, base=expander.word(self.base), platform=platform)


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    """RUN. The command text is never expanded by the frontend: the shell does it.

    ``mount_specs`` keep the raw ``--mount`` values so that :meth:`expand` can
    re-read them with variables substituted; ``mounts`` is their parsed form, complete
    only after :meth:`expand` (before it, specs using variables are left out).
    """

    command: ShellOrExec
    mounts: tuple[RunMount, ...]
    mount_specs: tuple[str, ...]
    network: NetworkMode
    security: str
    heredocs: tuple[Heredoc, ...]

    def expand(self, expander: WordExpander) -> Self:
        mounts = _parse_mounts(self.mount_specs, self.location, expander.word)
        return dataclasses.replace(self, mounts=mounts)

    @property
    def heredoc_script(self) -> Heredoc | None:
        """The heredoc when the whole command is one (``RUN <<EOF``): its body is the script."""
        if not isinstance(self.command, ShellForm) or len(self.heredocs) == 0:
            return None
        marker = parse_heredoc_marker(self.command.text.strip())
        if marker is None or marker[0] != self.heredocs[0].name:
            return None
        return self.heredocs[0]

    def shell_text_with_heredocs(self) -> str:
        """Command line plus heredoc bodies and delimiters, as a shell reads it (``cat <<EOF``)."""
        if not isinstance(self.command, ShellForm):
            raise TypeError("exec-form RUN has no shell text")
        parts = [self.command.text, "\n"]
        for heredoc in self.heredocs:
            parts += [heredoc.content, heredoc.name, "\n"]
        return "".join(parts)


@dataclass(frozen=True, kw_only=True)
class _FileCopy(Instruction):
    """Fields COPY and ADD share. ``sources`` excludes heredoc markers (see ``heredocs``)."""

    sources: tuple[str, ...]
    dest: str
    chown: str | None
    chmod: str | None
    link: bool
    exclude: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]

    def _expanded_common(self, expander: WordExpander) -> _ExpandedFileFields:
        def optional(value: str | None) -> str | None:
            return expander.word(value) if value is not None else None

        return _ExpandedFileFields(
            sources=tuple(expander.word(source) for source in self.sources),
            dest=expander.word(self.dest),
            chown=optional(self.chown),
            chmod=optional(self.chmod),
            exclude=tuple(expander.word(pattern) for pattern in self.exclude),
            # Only bodies under an unquoted delimiter are expanded (``<<EOF``, not ``<<"EOF"``).
            heredocs=tuple(
                dataclasses.replace(doc, content=expander.heredoc(doc.content))
                if doc.expand
                else doc
                for doc in self.heredocs
            ),
        )


class _ExpandedFileFields(TypedDict):
    sources: tuple[str, ...]
    dest: str
    chown: str | None
    chmod: str | None
    exclude: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]


@dataclass(frozen=True, kw_only=True)
class Copy(_FileCopy):
    from_: str | None
    parents: bool

    def expand(self, expander: WordExpander) -> Self:
        from_ = expander.word(self.from_) if self.from_ is not None else None
        return dataclasses.replace(self, from_=from_, **self._expanded_common(expander))


@dataclass(frozen=True, kw_only=True)
class Add(_FileCopy):
    """``unpack`` is ``--unpack`` (Dockerfile 1.17); None: the default, which unpacks
    local archives and not remote ones."""

    checksum: str | None
    keep_git_dir: bool
    unpack: bool | None = None

    def expand(self, expander: WordExpander) -> Self:
        checksum = expander.word(self.checksum) if self.checksum is not None else None
        return dataclasses.replace(self, checksum=checksum, **self._expanded_common(expander))


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    pairs: tuple[KeyValue, ...]

    def expand(self, expander: WordExpander) -> Self:
        # Every pair sees the variables as they were before this line (one ENV, one step).
        pairs = tuple(KeyValue(expander.word(p.key), expander.word(p.value)) for p in self.pairs)
        return dataclasses.replace(self, pairs=pairs)


@dataclass(frozen=True)
class ArgDeclaration:
    name: str
    default: str | None


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """``ARG a b=1``; defaults are expanded by :mod:`.stages` as each one is declared."""

    declarations: tuple[ArgDeclaration, ...]


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    path: str

    def expand(self, expander: WordExpander) -> Self:
        return dataclasses.replace(self, path=expander.word(self.path))


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    user: str

    def expand(self, expander: WordExpander) -> Self:
        return dataclasses.replace(self, user=expander.word(self.user))


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    pairs: tuple[KeyValue, ...]

    def expand(self, expander: WordExpander) -> Self:
        pairs = tuple(KeyValue(expander.word(p.key), expander.word(p.value)) for p in self.pairs)
        return dataclasses.replace(self, pairs=pairs)


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    """Deprecated; an image builder records it as the ``maintainer`` label's author field."""

    name: str


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    ports: tuple[str, ...]

    def expand(self, expander: WordExpander) -> Self:
        # A variable may hold several ports ("80 443"), so EXPOSE splits after expansion.
        ports = tuple(port for raw in self.ports for port in expander.words(raw))
        return dataclasses.replace(self, ports=ports)


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    command: ShellOrExec


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    command: ShellOrExec


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    paths: tuple[str, ...]

    def expand(self, expander: WordExpander) -> Self:
        return dataclasses.replace(self, paths=tuple(expander.word(p) for p in self.paths))


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    signal: str

    def expand(self, expander: WordExpander) -> Self:
        return dataclasses.replace(self, signal=expander.word(self.signal))


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` (``test is None``) or ``HEALTHCHECK [flags] CMD ...``.

    Durations are nanoseconds as in the image config; None means "not given".
    """

    test: ShellOrExec | None
    interval_ns: int | None = None
    timeout_ns: int | None = None
    start_period_ns: int | None = None
    start_interval_ns: int | None = None
    retries: int | None = None


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """A trigger: the instruction text, run when the image is used as a base."""

    expression: str


@dataclass(frozen=True)
class Stage:
    """A ``FROM`` and the instructions up to the next one (unexpanded)."""

    index: int
    name: str | None
    base: str
    platform: str | None
    commands: tuple[Instruction, ...]
    location: Location
    from_instruction: From


# --------------------------------------------------------------------------- parsing


class _Common(TypedDict):
    location: Location
    original: str


class _FileCopyFields(TypedDict):
    sources: tuple[str, ...]
    dest: str
    chown: str | None
    chmod: str | None
    link: bool
    exclude: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]


@dataclass
class _Flags:
    """Leading ``--flags`` of one node, consumed by name; leftovers are errors."""

    node: Node
    values: dict[str, list[str | None]] = field(default_factory=dict)
    known: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for flag in self.node.flags:
            name, sep, value = flag[2:].partition("=")
            self.values.setdefault(name.lower(), []).append(value if sep else None)

    def error(self, message: str) -> ParseError:
        return ParseError(message, self.node.start_line)

    def _take(self, name: str) -> list[str | None] | None:
        self.known.append(name)
        return self.values.pop(name, None)

    def string(self, name: str) -> str | None:
        given = self._take(name)
        if not given:
            return None
        if len(given) > 1:
            raise self.error(f"duplicate flag specified: {name}")
        if given[0] is None:
            raise self.error(f"missing a value on flag: {name}")
        return given[0]

    def strings(self, name: str) -> tuple[str, ...]:
        given = self._take(name) or []
        if any(value is None for value in given):
            raise self.error(f"missing a value on flag: {name}")
        return tuple(value for value in given if value is not None)

    def boolean(self, name: str) -> bool:
        return self.optional_boolean(name) or False

    def optional_boolean(self, name: str) -> bool | None:
        """A boolean flag, None when it is not given."""
        given = self._take(name)
        if not given:
            return None
        if len(given) > 1:
            raise self.error(f"duplicate flag specified: {name}")
        value = given[0]
        if value is None or value.lower() == "true":
            return True
        if value.lower() == "false":
            return False
        raise self.error(f"expecting boolean value for flag {name}, not: {value}")

    def finish(self) -> None:
        if self.values:
            name = next(iter(self.values))
            raise self.error(did_you_mean(f"unknown flag: {name}", name, self.known))


def _error(node: Node, message: str) -> ParseError:
    return ParseError(message, node.start_line)


def _json_array(node: Node) -> tuple[str, ...] | None:
    """The exec-form arguments, or None for shell form (anything not a JSON array)."""
    text = node.args.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _error(node, f"{node.keyword}: JSON form must be an array of strings")
    return tuple(value)


def _shell_or_exec(node: Node) -> ShellOrExec:
    args = _json_array(node)
    if args is not None:
        return ExecForm(args)
    return ShellForm(node.args.strip())


def _words_keep_quotes(text: str, escape: str) -> list[str]:
    """Split on whitespace outside quotes, keeping quotes and escapes (the lexer removes them)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == escape:
            current.append(char)
            escaped = True
        elif quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in ("'", '"'):
            current.append(char)
            quote = char
        elif char.isspace():
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def _key_values(node: Node, escape: str) -> tuple[KeyValue, ...]:
    """ENV/LABEL: ``k=v k2="v 2"`` or the legacy ``k the rest of the line``."""
    words = _words_keep_quotes(node.args, escape)
    if not words:
        raise _error(node, f"{node.keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = node.args.strip().split(None, 1)
        if len(parts) < 2:
            raise _error(node, f"{node.keyword} must have two arguments")
        return (KeyValue(parts[0], parts[1]),)
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise _error(
                node, f"syntax error - can't find = in {word!r}. Must be of the form: name=value"
            )
        if not key:
            raise _error(node, f"{node.keyword} names can not be blank")
        pairs.append(KeyValue(key, value))
    return tuple(pairs)


def _parse_duration_ns(node: Node, flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    if text == "0":
        return 0
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS_NS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise _error(node, f"invalid duration for --{flag}: {text!r}")
    duration = int(total)
    if 0 < duration < _MIN_HEALTHCHECK_DURATION_NS or duration < 0:
        raise _error(node, f"--{flag} cannot be less than 1ms")
    return duration


def _literal_from(node: Node, value: str | None, escape: str) -> str | None:
    """``COPY --from`` as written: BuildKit refuses any variable in it (the stage graph
    is fixed before variables are known), whatever the variable's scope."""
    if value is None:
        return None
    try:
        literal = Lexer(escape).process_word(value, {}) == value
    except ExpansionError:
        literal = False
    if not literal:
        raise _error(
            node,
            "variable expansion is not supported for --from, define a new stage with FROM "
            "using ARG from global scope as a workaround",
        )
    return value


def _parse_mounts(
    specs: Sequence[str], location: Location, expand: Callable[[str], str] | None = None
) -> tuple[RunMount, ...]:
    """Parse ``--mount`` values. Without ``expand`` (before expansion), values that
    use variables cannot be checked yet and are left out; :meth:`Run.expand` reads all."""
    try:
        if expand is None:
            for spec in specs:
                check_mount_from_literal(spec)
            return tuple(parse_mount(spec) for spec in specs if "$" not in spec)
        return tuple(parse_mount(spec, expand) for spec in specs)
    except MountSpecError as error:
        raise ParseError(str(error), location.start_line) from None


def _require_args(node: Node) -> None:
    if not node.args.strip():
        raise _error(node, f"{node.keyword} requires at least one argument")


def _file_copy_fields(node: Node, flags: _Flags) -> _FileCopyFields:
    json_args = _json_array(node)
    words = list(json_args) if json_args is not None else node.args.split()
    if len(words) < 2:
        raise _error(
            node,
            f"{node.keyword} requires at least two arguments, but only one was provided. "
            "Destination could not be determined.",
        )
    heredocs_by_name = {heredoc.name: heredoc for heredoc in node.heredocs}
    sources: list[str] = []
    heredocs: list[Heredoc] = []
    for word in words[:-1]:
        marker = parse_heredoc_marker(word) if json_args is None else None
        if marker is not None and marker[0] in heredocs_by_name:
            heredocs.append(heredocs_by_name[marker[0]])
        else:
            sources.append(word)
    return _FileCopyFields(
        sources=tuple(sources),
        dest=words[-1],
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        exclude=flags.strings("exclude"),
        heredocs=tuple(heredocs),
    )


def _parse_from(node: Node, flags: _Flags, common: _Common) -> Instruction:
    words = node.args.split()
    platform = flags.string("platform")
    flags.finish()
    if len(words) == 1:
        return From(base=words[0], stage_name=None, platform=platform, **common)
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.match(name):
            raise _error(
                node,
                f"invalid name for build stage: {words[2]!r}, "
                "name can't start with a number or contain symbols",
            )
        return From(base=words[0], stage_name=name, platform=platform, **common)
    raise _error(node, "FROM requires either one argument, or three: FROM <source> [AS <name>]")


def _parse_run(node: Node, flags: _Flags, common: _Common) -> Instruction:
    _require_args(node)
    specs = flags.strings("mount")
    network_flag = flags.string("network") or "default"
    network = _NETWORK_MODES.get(network_flag)
    if network is None:
        raise _error(node, f"network mode {network_flag!r} not supported")
    security = flags.string("security") or "sandbox"
    if security not in ("sandbox", "insecure"):
        raise _error(node, f"security mode {security!r} not supported")
    flags.finish()
    location = common["location"]
    return Run(
        command=_shell_or_exec(node),
        mounts=_parse_mounts(specs, location),
        mount_specs=specs,
        network=network,
        security=security,
        heredocs=node.heredocs,
        **common,
    )


def _parse_healthcheck(node: Node, flags: _Flags, common: _Common) -> Instruction:
    parts = node.args.strip().split(None, 1)
    if not parts:
        raise _error(node, "HEALTHCHECK requires at least one argument")
    kind = parts[0].upper()
    if kind == "NONE":
        if len(parts) > 1:
            raise _error(node, "HEALTHCHECK NONE takes no arguments")
        if node.flags:
            raise _error(node, "options cannot be used with HEALTHCHECK NONE")
        return Healthcheck(test=None, **common)
    if kind != "CMD":
        raise _error(node, f"unknown type {parts[0]!r} in HEALTHCHECK (try CMD)")
    if len(parts) < 2:
        raise _error(node, "missing command after HEALTHCHECK CMD")
    retries_text = flags.string("retries")
    retries = None
    if retries_text is not None:
        try:
            retries = int(retries_text)
        except ValueError:
            raise _error(node, f"invalid value for --retries: {retries_text!r}") from None
        if retries < 0:
            raise _error(node, f"--retries cannot be negative ({retries})")
    inner = dataclasses.replace(node, args=parts[1])
    result = Healthcheck(
        test=_shell_or_exec(inner),
        interval_ns=_parse_duration_ns(node, "interval", flags.string("interval")),
        timeout_ns=_parse_duration_ns(node, "timeout", flags.string("timeout")),
        start_period_ns=_parse_duration_ns(node, "start-period", flags.string("start-period")),
        start_interval_ns=_parse_duration_ns(
            node, "start-interval", flags.string("start-interval")
        ),
        retries=retries,
        **common,
    )
    flags.finish()
    return result


def _parse_onbuild(node: Node, common: _Common) -> Instruction:
    expression = node.args.strip()
    if not expression:
        raise _error(node, "ONBUILD requires at least one argument")
    trigger = expression.split(None, 1)[0].upper()
    if trigger == "ONBUILD":
        raise _error(node, "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("FROM", "MAINTAINER"):
        raise _error(node, f"{trigger} isn't allowed as an ONBUILD trigger")
    if trigger not in INSTRUCTIONS:
        raise _error(node, f"unknown instruction in ONBUILD: {trigger}")
    # The trigger keeps its heredoc bodies, each followed by its delimiter, as BuildKit
    # stores it in the image config: parsed again when it fires, it is the same instruction.
    for heredoc in node.heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    return Onbuild(expression=expression, **common)


def parse_instruction(node: Node, escape: str = "\\") -> Instruction:
    """Turn one AST node into its typed instruction; raises :class:`ParseError`."""
    flags = _Flags(node)
    common: _Common = {
        "location": Location(node.start_line, node.end_line),
        "original": node.original,
    }
    keyword = node.keyword
    if keyword == "FROM":
        return _parse_from(node, flags, common)
    if keyword == "RUN":
        return _parse_run(node, flags, common)
    if keyword == "HEALTHCHECK":
        return _parse_healthcheck(node, flags, common)
    if keyword == "COPY":
        fields = _file_copy_fields(node, flags)
        result: Instruction = Copy(
            from_=_literal_from(node, flags.string("from"), escape),
            parents=flags.boolean("parents"),
            **fields,
            **common,
        )
        flags.finish()
        return result
    if keyword == "ADD":
        fields = _file_copy_fields(node, flags)
        result = Add(
            checksum=flags.string("checksum"),
            keep_git_dir=flags.boolean("keep-git-dir"),
            unpack=flags.optional_boolean("unpack"),
            **fields,
            **common,
        )
        flags.finish()
        return result
    flags.finish()  # the remaining instructions take no flags
    return _parse_simple(node, escape, common)


def _parse_simple(node: Node, escape: str, common: _Common) -> Instruction:
    keyword = node.keyword
    args = node.args.strip()
    if keyword == "ONBUILD":
        return _parse_onbuild(node, common)
    if keyword in ("ENV", "LABEL"):
        pairs = _key_values(node, escape)
        return Env(pairs=pairs, **common) if keyword == "ENV" else Label(pairs=pairs, **common)
    if keyword in ("CMD", "ENTRYPOINT", "SHELL"):
        command = _shell_or_exec(node)
        if keyword == "SHELL":
            if not isinstance(command, ExecForm):
                raise _error(node, "SHELL requires the arguments to be in JSON form")
            if not command.args:
                raise _error(node, "SHELL requires at least one argument")
            return Shell(args=command.args, **common)
        if keyword == "CMD":
            return Cmd(command=command, **common)
        return Entrypoint(command=command, **common)
    _require_args(node)
    if keyword == "ARG":
        declarations = []
        for word in _words_keep_quotes(args, escape):
            name, sep, default = word.partition("=")
            if not name:
                raise _error(node, "ARG names can not be blank")
            declarations.append(ArgDeclaration(name, default if sep else None))
        return Arg(declarations=tuple(declarations), **common)
    if keyword == "VOLUME":
        paths = _json_array(node)
        volume_paths = paths if paths is not None else tuple(args.split())
        if not volume_paths or any(not path.strip() for path in volume_paths):
            raise _error(node, "VOLUME specified can not be an empty string")
        return Volume(paths=volume_paths, **common)
    if keyword == "EXPOSE":
        return Expose(ports=tuple(args.split()), **common)
    if keyword == "WORKDIR":
        return Workdir(path=args, **common)
    if keyword == "USER":
        return User(user=args, **common)
    if keyword == "STOPSIGNAL":
        return StopSignal(signal=args, **common)
    if keyword == "MAINTAINER":
        return Maintainer(name=args, **common)
    raise _error(node, f"unknown instruction: {keyword}")


def parse_stages(dockerfile: Dockerfile) -> tuple[tuple[Arg, ...], tuple[Stage, ...]]:
    """Split a parsed Dockerfile into the global ARGs and its stages."""
    global_args: list[Arg] = []
    stages: list[Stage] = []
    current: From | None = None
    commands: list[Instruction] = []

    def close_stage() -> None:
        if current is None:
            return
        last_line = commands[-1].location.end_line if commands else current.location.end_line
        stages.append(
            Stage(
                index=len(stages),
                name=current.stage_name,
                base=current.base,
                platform=current.platform,
                commands=tuple(commands),
                location=Location(current.location.start_line, last_line),
                from_instruction=current,
            )
        )

    for node in dockerfile.nodes:
        try:
            instruction = parse_instruction(node, dockerfile.escape)
        except ParseError as error:
            # parse_instruction sees one node only; name the file here.
            raise ParseError(error.message, error.line, dockerfile.filename) from None
        if isinstance(instruction, From):
            close_stage()
            current = instruction
            commands = []
        elif current is None:
            if not isinstance(instruction, Arg):
                raise ParseError(
                    f"{node.keyword} before the first FROM (only ARG may come first)",
                    node.start_line,
                    dockerfile.filename,
                )
            global_args.append(instruction)
        else:
            commands.append(instruction)
    close_stage()
    if not stages:
        line = dockerfile.nodes[-1].end_line if dockerfile.nodes else 1
        raise ParseError("the Dockerfile has no FROM instruction", line, dockerfile.filename)
    return tuple(global_args), tuple(stages)
