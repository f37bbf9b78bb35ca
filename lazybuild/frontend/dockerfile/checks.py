"""BuildKit's Dockerfile build checks (``build --check``, and warnings of every build).

The rules, their names, descriptions and messages are BuildKit's (its
``frontend/dockerfile/linter``; https://docs.docker.com/reference/build-checks/), and so
is the ``# check=`` directive (``skip=RULE,…|all``, ``error=true``,
``experimental=RULE,…|all``) and the ``BUILDKIT_DOCKERFILE_CHECK`` build arg that
overrides it. The whole analysis is of the Dockerfile (and ``.dockerignore``) alone:
nothing is fetched, so it runs on the client even when a daemon builds.

One difference follows from that: BuildKit knows each base image's environment when it
reports ``UndefinedVar``; here a stage whose base is an image (rather than ``scratch``
or another stage of the file) has an environment we do not know, and its variables are
not reported (a false warning about ``$PATH`` would be worse than none).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lazybuild.errors import UsageError
from lazybuild.frontend.dockerfile.instructions import (
    Add,
    Arg,
    Copy,
    Env,
    ExecForm,
    Expose,
    From,
    Instruction,
    Label,
    Workdir,
    parse_instruction,
)
from lazybuild.frontend.dockerfile.parser import Dockerfile, Node, ParseError, parse
from lazybuild.frontend.dockerfile.shell import ExpansionError, Lexer
from lazybuild.frontend.dockerfile.stages import platform_args
from lazybuild.frontend.dockerfile.suggest import suggestion

__all__ = [
    "CHECK_BUILD_ARG",
    "RULES",
    "CheckConfig",
    "CheckReport",
    "Finding",
    "Rule",
    "check_dockerfile",
    "parse_check_options",
    "render_build_warnings",
    "render_check",
]

CHECK_BUILD_ARG = "BUILDKIT_DOCKERFILE_CHECK"
_URL = "https://docs.docker.com/go/dockerfile/rule/{}/"


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    slug: str
    experimental: bool = False

    @property
    def url(self) -> str:
        return _URL.format(self.slug)


def _rule(name: str, slug: str, description: str, *, experimental: bool = False) -> Rule:
    return Rule(name, description, slug, experimental)


STAGE_NAME_CASING = _rule("StageNameCasing", "stage-name-casing", "Stage names should be lowercase")
FROM_AS_CASING = _rule(
    "FromAsCasing", "from-as-casing", "The 'as' keyword should match the case of the 'from' keyword"
)
NO_EMPTY_CONTINUATION = _rule(
    "NoEmptyContinuation",
    "no-empty-continuation",
    "Empty continuation lines will become errors in a future release",
)
CONSISTENT_INSTRUCTION_CASING = _rule(
    "ConsistentInstructionCasing",
    "consistent-instruction-casing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)",
)
DUPLICATE_STAGE_NAME = _rule(
    "DuplicateStageName", "duplicate-stage-name", "Stage names should be unique"
)
RESERVED_STAGE_NAME = _rule(
    "ReservedStageName", "reserved-stage-name", "Reserved words should not be used as stage names"
)
JSON_ARGS_RECOMMENDED = _rule(
    "JSONArgsRecommended",
    "json-args-recommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to "
    "OS signals",
)
MAINTAINER_DEPRECATED = _rule(
    "MaintainerDeprecated",
    "maintainer-deprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
)
UNDEFINED_ARG_IN_FROM = _rule(
    "UndefinedArgInFrom", "undefined-arg-in-from", "FROM command must use declared ARGs"
)
WORKDIR_RELATIVE_PATH = _rule(
    "WorkdirRelativePath",
    "workdir-relative-path",
    "Relative workdir without an absolute workdir declared within the build can have "
    "unexpected results if the base image changes",
)
UNDEFINED_VAR = _rule(
    "UndefinedVar", "undefined-var", "Variables should be defined before their use"
)
MULTIPLE_INSTRUCTIONS_DISALLOWED = _rule(
    "MultipleInstructionsDisallowed",
    "multiple-instructions-disallowed",
    "Multiple instructions of the same type should not be used in the same stage",
)
LEGACY_KEY_VALUE_FORMAT = _rule(
    "LegacyKeyValueFormat",
    "legacy-key-value-format",
    "Legacy key/value format with whitespace separator should not be used",
)
REDUNDANT_TARGET_PLATFORM = _rule(
    "RedundantTargetPlatform",
    "redundant-target-platform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the "
    "default behavior",
)
SECRETS_USED_IN_ARG_OR_ENV = _rule(
    "SecretsUsedInArgOrEnv",
    "secrets-used-in-arg-or-env",
    "Sensitive data should not be used in the ARG or ENV commands",
)
INVALID_DEFAULT_ARG_IN_FROM = _rule(
    "InvalidDefaultArgInFrom",
    "invalid-default-arg-in-from",
    "Default value for global ARG results in an empty or invalid base image name",
)
FROM_PLATFORM_FLAG_CONST_DISALLOWED = _rule(
    "FromPlatformFlagConstDisallowed",
    "from-platform-flag-const-disallowed",
    "FROM --platform flag should not use a constant value",
)
COPY_IGNORED_FILE = _rule(
    "CopyIgnoredFile",
    "copy-ignored-file",
    "Attempting to Copy file that is excluded by .dockerignore",
)
EXPOSE_PROTO_CASING = _rule(
    "ExposeProtoCasing",
    "expose-proto-casing",
    "Protocol in EXPOSE instruction should be lowercase",
)
EXPOSE_INVALID_FORMAT = _rule(
    "ExposeInvalidFormat",
    "expose-invalid-format",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will "
    "become an error in a future release",
)

# BuildKit checks these as it dispatches an instruction, with the instruction's own
# `# check=` comment applied; the others (found while parsing, or across the file) see
# the file's directive only.
_INSTRUCTION_RULES = frozenset(
    {
        UNDEFINED_ARG_IN_FROM,
        REDUNDANT_TARGET_PLATFORM,
        FROM_PLATFORM_FLAG_CONST_DISALLOWED,
        UNDEFINED_VAR,
        LEGACY_KEY_VALUE_FORMAT,
        SECRETS_USED_IN_ARG_OR_ENV,
        JSON_ARGS_RECOMMENDED,
        MULTIPLE_INSTRUCTIONS_DISALLOWED,
        WORKDIR_RELATIVE_PATH,
        EXPOSE_PROTO_CASING,
        EXPOSE_INVALID_FORMAT,
        COPY_IGNORED_FILE,
    }
)
_CHECK_COMMENT = re.compile(r"^check\s*=\s*(.+?)\s*$", re.IGNORECASE)

RULES: tuple[Rule, ...] = (
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    UNDEFINED_VAR,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    REDUNDANT_TARGET_PLATFORM,
    SECRETS_USED_IN_ARG_OR_ENV,
    INVALID_DEFAULT_ARG_IN_FROM,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    COPY_IGNORED_FILE,
    EXPOSE_PROTO_CASING,
    EXPOSE_INVALID_FORMAT,
)

_RESERVED_STAGE_NAMES = ("context", "scratch")
_SECRET_WORDS = "apikey|auth|credential|credentials|key|password|pword|passwd|secret|token"
_SECRET_KEY = re.compile(rf"(?:_|^)(?:{_SECRET_WORDS})(?:_|$)", re.IGNORECASE)
_SECRET_ALLOWED = re.compile(r"(?:_|^)(?:public|file|version)(?:_|$)", re.IGNORECASE)
# BuildKit gives scratch images this PATH; a stage on scratch can use it.
_SCRATCH_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# Go's strconv.ParseBool, which BuildKit reads error= with.
_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


@dataclass(frozen=True)
class CheckConfig:
    """What ``# check=`` (or ``BUILDKIT_DOCKERFILE_CHECK``) asks for."""

    skip_all: bool = False
    skip: frozenset[str] = frozenset()
    experimental_all: bool = False
    experimental: frozenset[str] = frozenset()
    error: bool = False

    def enabled(self, rule: Rule) -> bool:
        if rule.experimental:
            return self.experimental_all or rule.name in self.experimental
        return not self.skip_all and rule.name not in self.skip


def parse_check_options(text: str | None) -> CheckConfig:
    """``skip=A,B|all;error=true;experimental=C|all``, as BuildKit reads it."""
    text = (text or "").strip()
    if not text:
        return CheckConfig()
    skip_all = experimental_all = error = False
    skip: frozenset[str] = frozenset()
    experimental: frozenset[str] = frozenset()
    for part in text.split(";", 2):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"failed to parse check options: invalid check option {part!r}")
        key, value = key.strip(), value.strip()
        if key == "skip":
            if value == "all":
                skip_all = True
            else:
                skip = frozenset(name.strip() for name in value.split(","))
        elif key == "experimental":
            if value == "all":
                experimental_all = True
            else:
                experimental = frozenset(name.strip() for name in value.split(","))
        elif key == "error":
            if value not in _BOOLS:
                raise UsageError(
                    f"failed to parse check options: failed to parse check option {part!r}"
                )
            error = _BOOLS[value]
        else:
            raise UsageError(f"failed to parse check options: invalid check option {key!r}")
    return CheckConfig(skip_all, skip, experimental_all, experimental, error)


@dataclass(frozen=True)
class Finding:
    rule: Rule
    message: str
    start_line: int
    end_line: int

    def short(self) -> str:
        """``Rule: message (line N)``: how a build lists it."""
        return f"{self.rule.name}: {self.message} (line {self.start_line})"


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    config: CheckConfig = field(default_factory=CheckConfig)
    source: str = ""
    filename: str = "Dockerfile"
    # The Dockerfile did not parse: (message, line), reported as BuildKit reports it.
    error: tuple[str, int] | None = None

    @property
    def violation(self) -> str | None:
        """BuildKit's error when ``error=true`` and a rule fired, else None."""
        if not self.config.error or not self.findings:
            return None
        names = list(dict.fromkeys(finding.rule.name for finding in self.findings))
        return f"lint violation found for rules: {', '.join(names)}"


@dataclass
class _Checker:
    dockerfile: Dockerfile
    lines: list[str]
    config: CheckConfig
    build_args: Mapping[str, str]
    ignored: Callable[[str], bool] | None
    findings: list[Finding] = field(default_factory=list)

    current: Node | None = None  # the instruction being looked at, for its comments
    previous_end: int = 0  # the last line of the instruction before it

    def report(self, rule: Rule, node: Node | Instruction, message: str) -> None:
        config = self.config
        if rule in _INSTRUCTION_RULES and self.current is not None:
            config = self._with_comments(self.current)
        if not config.enabled(rule):
            return
        if isinstance(node, Node):
            start, end = node.start_line, node.end_line
        else:
            start, end = node.location.start_line, node.location.end_line
        self.findings.append(Finding(rule, message, start, end))

    def _with_comments(self, node: Node) -> CheckConfig:
        """The config with a ``# check=`` comment just above ``node`` merged in: as in
        BuildKit, it may skip or enable rules for that instruction (not make them
        errors); ``# check=skip=X // why`` keeps what follows a space as a remark."""
        comments: list[str] = []
        for raw in self.lines[self.previous_end : node.start_line - 1]:
            line = raw.strip()
            if not line.startswith("#"):
                continue
            text = line[1:].strip()
            comments = [*comments, text] if text else []
        for text in comments:
            match = _CHECK_COMMENT.match(text)
            if match is None:
                continue
            try:
                local = parse_check_options(match.group(1).split(" ", 1)[0])
            except UsageError:
                return self.config
            return CheckConfig(
                skip_all=self.config.skip_all or local.skip_all,
                skip=self.config.skip | local.skip,
                experimental_all=self.config.experimental_all or local.experimental_all,
                experimental=self.config.experimental | local.experimental,
                error=self.config.error,
            )
        return self.config


def check_dockerfile(
    source: bytes | str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    ignored: Callable[[str], bool] | None = None,
) -> CheckReport:
    """Every enabled rule over ``source``. ``ignored`` says whether a context path is
    excluded by ``.dockerignore`` (``CopyIgnoredFile``; None: no such file). A
    Dockerfile that does not parse is the report's ``error``, with what was found
    before it."""
    args = dict(build_args or {})
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    report = CheckReport(source=text.removeprefix("\ufeff"), filename=filename)
    try:
        dockerfile = parse(source, filename=filename)
    except ParseError as error:
        report.error = (error.message, error.line)
        return report
    directive = args.get(CHECK_BUILD_ARG, dockerfile.directives.check)
    report.config = parse_check_options(directive)
    lines = report.source.split("\n")
    checker = _Checker(dockerfile, lines, report.config, args, ignored)
    try:
        instructions = [parse_instruction(node, dockerfile.escape) for node in dockerfile.nodes]
    except ParseError as error:
        report.error = (error.message, error.line)
        return report
    _empty_continuations(checker)
    _casing(checker)
    _stages(checker, instructions)
    report.findings = sorted(checker.findings, key=lambda finding: finding.start_line)
    return report


def _empty_continuations(checker: _Checker) -> None:
    """Empty lines inside an instruction's continued line (not its heredoc bodies)."""
    escape = checker.dockerfile.escape
    for node in checker.dockerfile.nodes:
        index = node.start_line - 1
        found = False
        while index < len(checker.lines):
            raw = checker.lines[index].removesuffix("\r")
            if index > node.start_line - 1:
                if not raw.strip():
                    found = True
                    index += 1
                    continue
                if raw.lstrip(" \t").startswith("#"):
                    index += 1
                    continue
            if not raw.rstrip(" \t").endswith(escape):
                break
            index += 1
        if found:
            checker.report(NO_EMPTY_CONTINUATION, node, "Empty continuation line")


def _keyword_as_written(node: Node) -> str:
    return node.original.split(None, 1)[0]


def _casing(checker: _Checker) -> None:
    # As BuildKit, which counts the stages' instructions: global ARGs are left out.
    nodes = list(checker.dockerfile.nodes)
    first_from = next((i for i, node in enumerate(nodes) if node.keyword == "FROM"), len(nodes))
    nodes = nodes[first_from:]
    written = [_keyword_as_written(node) for node in nodes]
    lower = sum(1 for word in written if word == word.lower())
    upper = sum(1 for word in written if word == word.upper() and word != word.lower())
    majority_lower = lower > upper
    for node, word in zip(nodes, written, strict=True):
        if majority_lower and word != word.lower():
            casing = "lowercase"
        elif not majority_lower and word != word.upper():
            casing = "uppercase"
        else:
            continue
        message = f"Command '{word}' should match the case of the command majority ({casing})"
        checker.report(CONSISTENT_INSTRUCTION_CASING, node, message)


@dataclass
class _Stage:
    name: str | None
    # None: the base image's environment, which is not known here.
    env: dict[str, str] | None
    declared: set[str] = field(default_factory=set)
    workdir_set: bool = False
    shell_set: bool = False
    seen: dict[str, Instruction] = field(default_factory=dict)


class _Recorder:
    """A :class:`WordExpander` that notes the variables a word uses and which are unset."""

    def __init__(self, escape: str, env: Mapping[str, str]) -> None:
        self.lexer = Lexer(escape)
        self.raw = Lexer("\\", quotes_are_text=True)
        self.env = env
        self.unset: list[str] = []

    def _note(self, lexer: Lexer, text: str) -> None:
        try:
            names = lexer.referenced_names(text, self.env)
        except ExpansionError:
            return
        for name in sorted(names):
            if name not in self.env and name not in self.unset:
                self.unset.append(name)

    def word(self, text: str) -> str:
        self._note(self.lexer, text)
        return text

    def words(self, text: str) -> list[str]:
        self._note(self.lexer, text)
        return text.split()

    def heredoc(self, text: str) -> str:
        self._note(self.raw, text)
        return text


def _expand_defaults(lexer: Lexer, text: str, env: Mapping[str, str]) -> tuple[str, set[str]]:
    try:
        return lexer.process_word(text, env), lexer.referenced_names(text, env)
    except ExpansionError:
        return text, set()


def _host_platform_args() -> dict[str, str]:
    """The platform ARGs of a build here (``FROM build_${TARGETARCH}`` must name a
    stage that exists with them, not ``build_``)."""
    from lazybuild.oci.platform import host_platform

    host = host_platform()
    return platform_args(host, host)


@dataclass
class _Globals:
    """The global ARGs: declared names, their defaults, and their values in this build."""

    lexer: Lexer
    predefined: dict[str, str] = field(default_factory=_host_platform_args)
    declared: set[str] = field(default_factory=set)
    defaults: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    stages: dict[str, _Stage] = field(default_factory=dict)

    def declare(self, checker: _Checker, instruction: Arg) -> None:
        # BuildKit looks for secrets in a stage's ARGs only, not in these.
        for declaration in instruction.declarations:
            self.declared.add(declaration.name)
            default = None
            if declaration.default is not None:
                scope = {**self.predefined, **self.values}
                default = _expand_defaults(self.lexer, declaration.default, scope)[0]
                self.defaults[declaration.name] = default
            value = checker.build_args.get(declaration.name, default)
            if value is not None:
                self.values[declaration.name] = value


def _stages(checker: _Checker, instructions: list[Instruction]) -> None:
    globals_ = _Globals(Lexer(checker.dockerfile.escape))
    stage: _Stage | None = None
    for node, instruction in zip(checker.dockerfile.nodes, instructions, strict=True):
        checker.current = node
        if isinstance(instruction, From):
            stage = _from(checker, node, instruction, globals_)
        elif stage is None:
            if isinstance(instruction, Arg):
                globals_.declare(checker, instruction)
        else:
            _instruction(checker, node, instruction, stage, globals_.values)
        checker.previous_end = node.end_line
    checker.current = None


def _from(checker: _Checker, node: Node, instruction: From, globals_: _Globals) -> _Stage:
    lexer, predefined, stages = globals_.lexer, globals_.predefined, globals_.stages
    words = node.args.split()
    keyword = _keyword_as_written(node)
    if len(words) == 3:
        as_word, written = words[1], words[2]
        if written != written.lower():
            message = f"Stage name '{written}' should be lowercase"
            checker.report(STAGE_NAME_CASING, node, message)
        if keyword in (keyword.lower(), keyword.upper()):
            wanted = as_word.lower() if keyword == keyword.lower() else as_word.upper()
            if as_word != wanted:
                message = f"'{as_word}' and '{keyword}' keywords' casing do not match"
                checker.report(FROM_AS_CASING, node, message)
    name = instruction.stage_name
    if name is not None:
        if name in _RESERVED_STAGE_NAMES:
            message = f'Stage name should not use the same name as reserved stage "{name}"'
            checker.report(RESERVED_STAGE_NAME, node, message)
        if name in stages:
            message = f'Duplicate stage name "{name}", stage names should be unique'
            checker.report(DUPLICATE_STAGE_NAME, node, message)

    known = globals_.declared | set(predefined)
    scope = {**predefined, **globals_.values}
    base, referenced = _expand_defaults(lexer, instruction.base, scope)
    texts = [instruction.base] + ([instruction.platform] if instruction.platform else [])
    for text in texts:
        for arg in sorted(_expand_defaults(lexer, text, scope)[1] - known):
            hint = suggestion(arg, sorted(known))
            message = f"FROM argument '{arg}' is not declared"
            if hint:
                message += f" (did you mean {hint}?)"
            checker.report(UNDEFINED_ARG_IN_FROM, node, message)
    default_scope = {**predefined, **globals_.defaults}
    default_base = _expand_defaults(lexer, instruction.base, default_scope)[0]
    if referenced and not _valid_reference(default_base):
        message = (
            f"Default value for ARG {instruction.base} results in empty or invalid base image name"
        )
        checker.report(INVALID_DEFAULT_ARG_IN_FROM, node, message)
    if instruction.platform is not None:
        _platform(checker, node, instruction, scope, lexer)

    parent = stages.get(base.lower())
    env: dict[str, str] | None
    if parent is not None:
        env = None if parent.env is None else dict(parent.env)
    elif base.lower() == "scratch":
        env = dict(_SCRATCH_ENV)
    else:
        env = None
    stage = _Stage(name, env)
    if parent is not None:
        stage.workdir_set, stage.shell_set = parent.workdir_set, parent.shell_set
    if name is not None:
        stages.setdefault(name, stage)
    return stage


def _platform(
    checker: _Checker, node: Node, instruction: From, scope: Mapping[str, str], lexer: Lexer
) -> None:
    platform = instruction.platform or ""
    result, referenced = _expand_defaults(lexer, platform, scope)
    if referenced == {"TARGETPLATFORM"} and platform.strip("${}") == "TARGETPLATFORM":
        message = (
            f"Setting platform to predefined {platform} in FROM is redundant as this is the "
            "default behavior"
        )
        checker.report(REDUNDANT_TARGET_PLATFORM, node, message)
    if referenced:
        return
    parts = result.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        return  # not a platform: the build says so
    name = instruction.stage_name or ""
    if parts[0] in name or parts[1] in name:
        return
    message = f'FROM --platform flag should not use constant value "{result}"'
    checker.report(FROM_PLATFORM_FLAG_CONST_DISALLOWED, node, message)


_REFERENCE = re.compile(
    r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?/)?"  # a registry host, maybe
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@[a-z0-9]+:[a-f0-9]{32,})?$"
)


def _valid_reference(text: str) -> bool:
    """Roughly distribution/reference's ParseNormalizedNamed: lower-case path components,
    an optional host, tag and digest."""
    return bool(text) and _REFERENCE.match(text) is not None


def _secret(checker: _Checker, keyword: str, key: str, instruction: Instruction) -> None:
    if _SECRET_KEY.search(key) and not _SECRET_ALLOWED.search(key):
        message = f'Do not use ARG or ENV instructions for sensitive data ({keyword} "{key}")'
        checker.report(SECRETS_USED_IN_ARG_OR_ENV, instruction, message)


def _legacy_key_value(checker: _Checker, node: Node) -> None:
    words = node.args.split(None, 1)
    if words and "=" not in words[0]:
        keyword = node.keyword
        message = (
            f'"{keyword} key=value" should be used instead of legacy "{keyword} key value" format'
        )
        checker.report(LEGACY_KEY_VALUE_FORMAT, node, message)


def _instruction(
    checker: _Checker,
    node: Node,
    instruction: Instruction,
    stage: _Stage,
    global_values: Mapping[str, str],
) -> None:
    escape = checker.dockerfile.escape
    keyword = node.keyword
    if keyword == "MAINTAINER":
        message = "Maintainer instruction is deprecated in favor of using label"
        checker.report(MAINTAINER_DEPRECATED, node, message)
    if keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
        previous = stage.seen.get(keyword)
        if previous is not None:
            # BuildKit points at the earlier one: it is the one that is ignored.
            message = (
                f"Multiple {keyword} instructions should not be used in the same stage "
                "because only the last one will be used"
            )
            checker.report(MULTIPLE_INSTRUCTIONS_DISALLOWED, previous, message)
        stage.seen[keyword] = instruction
    if keyword in ("CMD", "ENTRYPOINT"):
        command = getattr(instruction, "command", None)
        # With a SHELL of the stage's own, the shell form is what the author chose.
        if command is not None and not isinstance(command, ExecForm) and not stage.shell_set:
            message = (
                f"JSON arguments recommended for {keyword} to prevent unintended behavior "
                "related to OS signals"
            )
            checker.report(JSON_ARGS_RECOMMENDED, node, message)
    if isinstance(instruction, Env | Label):
        _legacy_key_value(checker, node)

    env = stage.env
    if env is not None and isinstance(instruction, Arg):
        scope = {**env, **{name: "" for name in stage.declared}}
        for declaration in instruction.declarations:
            if declaration.default is not None:
                recorder = _Recorder(escape, scope)
                recorder.word(declaration.default)
                _report_unset(checker, instruction, recorder.unset, scope)
    elif env is not None:
        recorder = _Recorder(escape, {**env, **{name: "" for name in stage.declared}})
        instruction.expand(recorder)
        _report_unset(checker, instruction, recorder.unset, recorder.env)

    if isinstance(instruction, Arg):
        for declaration in instruction.declarations:
            _secret(checker, "ARG", declaration.name, instruction)
            stage.declared.add(declaration.name)
            value = checker.build_args.get(declaration.name, declaration.default)
            if value is None:
                value = global_values.get(declaration.name)
            if env is not None and value is not None:
                env[declaration.name] = value
    elif isinstance(instruction, Env):
        for pair in instruction.pairs:
            _secret(checker, "ENV", pair.key, instruction)
            if env is not None:
                env[pair.key] = pair.value
    elif isinstance(instruction, Workdir):
        # Only the first WORKDIR: fixing it fixes the relative ones after it.
        path = instruction.path
        if not stage.workdir_set and not path.startswith(("/", "$")):
            message = (
                f'Relative workdir "{path}" can have unexpected results if the base image changes'
            )
            checker.report(WORKDIR_RELATIVE_PATH, node, message)
        stage.workdir_set = True
    elif keyword == "SHELL":
        stage.shell_set = True
    elif isinstance(instruction, Expose):
        for port in instruction.ports:
            _expose(checker, node, port)
    elif isinstance(instruction, Copy | Add) and checker.ignored is not None:
        _ignored_sources(checker, instruction)


def _report_unset(
    checker: _Checker, instruction: Instruction, unset: Iterable[str], env: Mapping[str, str]
) -> None:
    for name in unset:
        if name in checker.build_args:
            continue
        hint = suggestion(name, sorted(env))
        message = f"Usage of undefined variable '${name}'"
        if hint:
            message += f" (did you mean ${hint}?)"
        checker.report(UNDEFINED_VAR, instruction, message)


def _expose(checker: _Checker, node: Node, port: str) -> None:
    if "$" in port:
        return  # its value is the build's to know
    spec, _, proto = port.partition("/")
    if proto and proto != proto.lower():
        message = f"Defined protocol '{port}' in EXPOSE instruction should be lowercase"
        checker.report(EXPOSE_PROTO_CASING, node, message)
    if ":" in spec:
        message = (
            "EXPOSE instruction should not define an IP address or host-port mapping, "
            f"found '{port}'"
        )
        checker.report(EXPOSE_INVALID_FORMAT, node, message)


def _ignored_sources(checker: _Checker, instruction: Copy | Add) -> None:
    import posixpath

    if isinstance(instruction, Copy) and instruction.from_ is not None:
        return
    if instruction.heredocs:
        return
    kind = "Add" if isinstance(instruction, Add) else "Copy"
    for source in instruction.sources:
        if "$" in source or "://" in source or source.startswith("git@"):
            continue
        path = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
        if path in (".", "") or checker.ignored is None or not checker.ignored(path):
            continue
        shown = posixpath.normpath(source)
        message = f'Attempting to {kind} file "{shown}" that is excluded by .dockerignore'
        checker.report(COPY_IGNORED_FILE, instruction, message)


def render_build_warnings(findings: list[Finding]) -> str:
    """The summary a build prints at its end, as buildx does."""
    count = "1 warning found" if len(findings) == 1 else f"{len(findings)} warnings found"
    lines = [f" {count}:"]
    lines += [f" - {finding.short()}" for finding in findings]
    return "\n".join(lines)


def _snippet(lines: list[str], filename: str, start: int, end: int) -> list[str]:
    """The lines around ``start``-``end``, marked, as BuildKit prints a source range."""
    if start < 1 or start > len(lines):
        return []
    end = min(end, len(lines))
    first, last, padded = start, end, 0
    pad = 4 if start == end else 2
    while padded < pad:
        if first > 1:
            first -= 1
            padded += 1
        if last != len(lines):
            last += 1
            padded += 1
        padded += 1
    out = [f"{filename}:{start}", "-" * 20]
    for number in range(first, last + 1):
        marker = ">>>" if start <= number <= end else "   "
        out.append(f" {number:3d} | {marker} {lines[number - 1]}")
    out.append("-" * 20)
    return out


def render_check(report: CheckReport) -> str:
    """``build --check``'s output: a count, then each finding with its lines."""
    lines = report.source.split("\n")
    out: list[str] = []
    count = len(report.findings)
    if count:
        found = "1 warning has been found!" if count == 1 else f"{count} warnings have been found!"
        out.append(f"Check complete, {found}")
    for finding in report.findings:
        out.append("")
        out.append(f"WARNING: {finding.rule.name} - {finding.rule.url}")
        out.append(finding.message)
        out += _snippet(lines, report.filename, finding.start_line, finding.end_line)
    if report.error is None and report.violation is None and not count:
        out.append("Check complete, no warnings found.")
    return "\n".join(out) + "\n"
