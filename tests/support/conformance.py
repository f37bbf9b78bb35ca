"""The BuildKit conformance suite's cases (tests/conformance/buildkit/<case>/): loading
a case's ``case.json``, building it with lazybuild, and checking what it expects.

A case is a directory holding a Dockerfile and its build context, translated from one of
BuildKit's own frontend integration tests (moby/buildkit, frontend/dockerfile/*_test.go),
and a ``case.json`` saying where it comes from and what the build must produce. The keys
are documented in tests/conformance/README.md; an unknown key is an error, so a typo
never silently turns an expectation off.

Every build runs ``python -m lazybuild build`` with ``--progress=rawjson``: its
``completed`` events say which steps were cached, for the cases that build twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.differential import read_oci_image

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "conformance" / "buildkit"
PYTHON = REPO / ".venv" / "bin" / "python"

BUILD_TIMEOUT = 300.0

# Build args every case may use; each is passed only to builds whose Dockerfile names it
# (so a case's build args stay what the case says):
#   BASE      the Debian slim base image in the local registry (BuildKit's tests use
#             busybox or alpine; every tool they call is in Debian's base too)
#   REGISTRY  the local registry's host:port, for cases that spell image names out
#   SERVED    the URL of served/ in the case's copy of its context (a rebuild's change
#             of a served file is what the server serves then)
#   SERVER    the local HTTP server's root URL (its path / answers ROOT_CONTENT)
AUTO_ARGS = ("BASE", "REGISTRY", "SERVED", "SERVER")
ERROR_PREFIX = "lazybuild: error: "  # how the command line says why it failed
ROOT_CONTENT = b"content2"

CASE_KEYS = frozenset(
    {
        "origin",
        "intent",
        "dockerfile",
        "same_as",
        "build_args",
        "target",
        "platform",
        "labels",
        "secrets",
        "modes",
        "sockets",
        "parents",
        "expect",
        "rebuild",
        "difference",
        "issue17",
        "pending",
        "bug",
    }
)
EXPECT_KEYS = frozenset(
    {"files", "absent", "config", "env", "error", "hardlinks", "steps", "history", "created"}
)
HISTORY_KEYS = frozenset({"contains", "lacks", "empty_layer"})
REBUILD_KEYS = frozenset(
    {
        "change",
        "remove",
        "build_args",
        "no_cache",
        "cached",
        "rerun",
        "same",
        "differ",
        "same_image",
        "expect",
    }
)
FILE_KEYS = frozenset({"content", "contains", "mode", "uid", "gid", "type", "target", "mtime_of"})


class CaseError(Exception):
    """A case.json that does not say what this module understands."""


def _check_keys(where: str, value: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise CaseError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")


@dataclass(frozen=True)
class FileExpectation:
    """What one path of the result's root filesystem must be."""

    path: str
    content: str | None = None
    contains: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    type: str | None = None  # "file", "dir", "symlink"
    target: str | None = None  # a symlink's target
    mtime_of: str | None = None  # a file of the case directory whose mtime it must have

    @classmethod
    def parse(cls, where: str, path: str, value: Any) -> FileExpectation:
        if isinstance(value, str):
            return cls(path, content=value)
        if not isinstance(value, dict):
            raise CaseError(f"{where}: {path}: a string or an object")
        _check_keys(f"{where}: {path}", value, FILE_KEYS)
        mode = value.get("mode")
        return cls(
            path,
            content=value.get("content"),
            contains=value.get("contains"),
            mode=int(mode, 8) if isinstance(mode, str) else mode,
            uid=value.get("uid"),
            gid=value.get("gid"),
            type=value.get("type"),
            target=value.get("target"),
            mtime_of=value.get("mtime_of"),
        )


def _history_entry(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CaseError(f"{where}: history entries are objects")
    _check_keys(f"{where}: history", value, HISTORY_KEYS)
    return value


@dataclass(frozen=True)
class Expectations:
    files: tuple[FileExpectation, ...] = ()
    absent: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)  # exact values of config fields
    env: Mapping[str, str] = field(default_factory=dict)  # entries Config.Env must hold
    error: tuple[str, ...] = ()  # substrings of the one error line
    hardlinks: tuple[tuple[str, ...], ...] = ()  # groups of paths that are one inode
    steps: tuple[str, ...] = ()  # step names the progress must show, exactly
    # the last entries of the image's history: created_by holds "contains" and not
    # "lacks", empty_layer as given
    history: tuple[Mapping[str, Any], ...] = ()
    # seconds since the epoch of the image's created time and of every history entry's
    created: int | None = None

    @classmethod
    def parse(cls, where: str, value: Mapping[str, Any]) -> Expectations:
        _check_keys(where, value, EXPECT_KEYS)
        error = value.get("error", ())
        return cls(
            files=tuple(
                FileExpectation.parse(where, p, v) for p, v in value.get("files", {}).items()
            ),
            absent=tuple(value.get("absent", ())),
            config=dict(value.get("config", {})),
            env=dict(value.get("env", {})),
            error=(error,) if isinstance(error, str) else tuple(error),
            hardlinks=tuple(tuple(g) for g in value.get("hardlinks", ())),
            steps=tuple(value.get("steps", ())),
            history=tuple(_history_entry(where, h) for h in value.get("history", ())),
            created=value.get("created"),
        )

    @property
    def needs_rootfs(self) -> bool:
        return bool(self.files or self.absent or self.hardlinks)

    @property
    def needs_config(self) -> bool:
        return bool(self.config or self.env or self.history or self.created is not None)


@dataclass(frozen=True)
class Rebuild:
    """A second build after changing the context (or the build args): which steps must
    come from the cache, which must run again, and what the result must be."""

    change: Mapping[str, str] = field(default_factory=dict)  # context path -> new content
    remove: tuple[str, ...] = ()  # context paths removed (a directory with its content)
    build_args: Mapping[str, str] | None = None  # replaces the first build's
    no_cache: bool = False  # the second build runs with --no-cache
    cached: tuple[str, ...] = ()  # substrings of step names that must be cached
    rerun: tuple[str, ...] = ()  # ... and that must run again
    same: tuple[str, ...] = ()  # result files equal to the first build's
    differ: tuple[str, ...] = ()  # result files different from the first build's
    same_image: bool = False  # both builds write the same image (index.json, byte for byte)
    expect: Expectations = field(default_factory=Expectations)

    @classmethod
    def parse(cls, where: str, value: Mapping[str, Any]) -> Rebuild:
        _check_keys(where, value, REBUILD_KEYS)
        args = value.get("build_args")
        return cls(
            change=dict(value.get("change", {})),
            remove=tuple(value.get("remove", ())),
            build_args=None if args is None else dict(args),
            no_cache=bool(value.get("no_cache", False)),
            cached=tuple(value.get("cached", ())),
            rerun=tuple(value.get("rerun", ())),
            same=tuple(value.get("same", ())),
            differ=tuple(value.get("differ", ())),
            same_image=bool(value.get("same_image", False)),
            expect=Expectations.parse(f"{where}.expect", value.get("expect", {})),
        )


@dataclass(frozen=True)
class Parent:
    """An image a case builds FROM, built first from another Dockerfile of the case and
    pushed to the local registry; its reference reaches later builds as ``arg``."""

    arg: str
    dockerfile: str


@dataclass(frozen=True)
class Case:
    name: str
    directory: Path  # the context (and Dockerfile) directory
    origin: str
    dockerfile: str = "Dockerfile"
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    modes: Mapping[str, int] = field(default_factory=dict)
    sockets: tuple[str, ...] = ()
    parents: tuple[Parent, ...] = ()
    expect: Expectations = field(default_factory=Expectations)
    rebuild: Rebuild | None = None
    difference: str | None = None
    issue17: str | None = None  # the item of issue 17 the case checks
    pending: bool = False  # that item's fix has not landed: the case fails until then
    bug: str | None = None  # a failure found by this suite, described

    @classmethod
    def load(cls, name: str, cases_dir: Path = CASES_DIR) -> Case:
        where = f"{name}/case.json"
        data = json.loads((cases_dir / name / "case.json").read_text())
        _check_keys(where, data, CASE_KEYS)
        if not data.get("origin"):
            raise CaseError(f"{where}: every case names its origin")
        directory = cases_dir / data.get("same_as", name)
        rebuild = data.get("rebuild")
        return cls(
            name=name,
            directory=directory,
            origin=data["origin"],
            dockerfile=data.get("dockerfile", "Dockerfile"),
            build_args=dict(data.get("build_args", {})),
            target=data.get("target"),
            platform=data.get("platform"),
            labels=dict(data.get("labels", {})),
            secrets=dict(data.get("secrets", {})),
            modes={p: int(m, 8) for p, m in data.get("modes", {}).items()},
            sockets=tuple(data.get("sockets", ())),
            parents=tuple(Parent(p["arg"], p["dockerfile"]) for p in data.get("parents", ())),
            expect=Expectations.parse(f"{where}: expect", data.get("expect", {})),
            rebuild=None if rebuild is None else Rebuild.parse(f"{where}: rebuild", rebuild),
            difference=data.get("difference"),
            issue17=data.get("issue17"),
            pending=bool(data.get("pending", False)),
            bug=data.get("bug"),
        )


def all_case_names(cases_dir: Path = CASES_DIR) -> list[str]:
    return sorted(p.name for p in cases_dir.iterdir() if (p / "case.json").is_file())


# --- building ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What every build of the module shares."""

    state_dir: Path
    registry: str  # host:port
    base_image: str
    http_url: str  # serves served_root
    served_root: Path  # holds the cases' copies of their contexts


@dataclass
class BuildRun:
    """One ``lazybuild build``."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rootfs: Path | None = None
    config: dict[str, Any] | None = None
    index_json: bytes | None = None  # the OCI layout's index.json
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        """The lines that are not progress events (rawjson goes to stderr)."""
        lines = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                try:
                    json.loads(line)
                    continue
                except ValueError:
                    pass
            if line.strip():
                lines.append(line)
        return lines

    def step_cached(self) -> dict[str, bool]:
        """Step name -> whether it came from the cache."""
        return {
            e["name"]: bool(e.get("cached"))
            for e in self.events
            if e.get("type") == "completed" and e.get("name")
        }

    def describe(self) -> str:
        shown = "\n".join(self.error_lines[-30:])
        return f"$ {' '.join(self.argv)}\nexit {self.returncode} after {self.seconds:.1f}s\n{shown}"


def _parse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


REGISTRY_PLACEHOLDER = "@REGISTRY@"


def prepare_context(case: Case, dest: Path, registry: str) -> Path:
    """A private copy of the case's context (symlinks kept), with the modes and sockets
    case.json asks for (git keeps neither). In Dockerfiles, @REGISTRY@ becomes the local
    registry's host:port, for image names where no variable may stand (``COPY
    --from=IMAGE``, ONBUILD triggers)."""
    shutil.copytree(case.directory, dest, symlinks=True)
    (dest / "case.json").unlink(missing_ok=True)
    for path in dest.iterdir():
        if "Dockerfile" in path.name and path.is_file() and not path.is_symlink():
            text = path.read_text()
            if REGISTRY_PLACEHOLDER in text:
                path.write_text(text.replace(REGISTRY_PLACEHOLDER, registry))
    for name, mode in case.modes.items():
        os.chmod(dest / name, mode)
    for name in case.sockets:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(dest / name))
        server.close()
    return dest


def auto_args(env: Environment, context: Path, text: str) -> dict[str, str]:
    served = (context / "served").relative_to(env.served_root)
    values = {
        "BASE": env.base_image,
        "REGISTRY": env.registry,
        "SERVED": f"{env.http_url}/{served}",
        "SERVER": env.http_url,
    }
    return {k: values[k] for k in AUTO_ARGS if k in text}


def run_build(
    env: Environment,
    context: Path,
    workdir: Path,
    *,
    dockerfile: str,
    build_args: Mapping[str, str],
    target: str | None = None,
    platform: str | None = None,
    labels: Mapping[str, str] = {},
    secrets: Mapping[str, str] = {},
    local: bool = False,
    oci: bool = False,
    push: str | None = None,
    no_cache: bool = False,
) -> BuildRun:
    """``lazybuild build`` of ``context`` with the given outputs; never raises for the
    build's own failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(PYTHON), "-m", "lazybuild", "--state-dir", str(env.state_dir), "build"]
    argv += ["-f", str(context / dockerfile), "--progress=rawjson", "--no-optimize"]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    if no_cache:
        argv.append("--no-cache")
    if platform:
        argv += ["--platform", platform]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    secret_env = {sid: f"CONFORMANCE_SECRET_{n}" for n, sid in enumerate(secrets)}
    for sid, variable in secret_env.items():
        argv += ["--secret", f"id={sid},env={variable}"]
    rootfs = workdir / "rootfs"
    layout = workdir / "oci"
    if local:
        argv += ["-o", f"type=local,dest={rootfs}"]
    if oci:
        argv += ["-o", f"type=oci,dest={layout},tar=false"]
    if push:
        argv += ["-o", f"type=registry,name={push}"]
    argv.append(str(context))
    process_env = {**os.environ, **{secret_env[s]: v for s, v in secrets.items()}}
    started = time.monotonic()
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=process_env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    run = BuildRun(
        argv=argv,
        returncode=completed.returncode,
        stdout=completed.stdout,
        stderr=completed.stderr,
        seconds=time.monotonic() - started,
        events=_parse_events(completed.stderr) + _parse_events(completed.stdout),
    )
    if completed.returncode == 0:
        if local:
            run.rootfs = rootfs
        if oci:
            _manifest, run.config = read_oci_image(layout)
            run.index_json = (layout / "index.json").read_bytes()
            shutil.rmtree(layout, ignore_errors=True)  # the config is all a case reads
    return run


@dataclass
class CaseResult:
    """Everything built for one case: its parents, its build, and its rebuild."""

    parents: list[BuildRun] = field(default_factory=list)
    first: BuildRun | None = None
    second: BuildRun | None = None
    first_files: dict[str, bytes] = field(default_factory=dict)  # for rebuild.same/differ
    seconds: float = 0.0


def build_case(case: Case, env: Environment, workdir: Path) -> CaseResult:
    """Build the case (parents first, then the case, then its rebuild if it has one)."""
    started = time.monotonic()
    result = CaseResult()
    if case.rebuild is not None:
        # A state directory of its own: which steps a second build runs must depend on
        # this case's first build only, never on another case that built the same steps
        # before.
        env = dataclasses.replace(env, state_dir=workdir / "state")
    context = prepare_context(case, workdir / "context", env.registry)
    args = dict(case.build_args)
    for number, parent in enumerate(case.parents):
        text = (context / parent.dockerfile).read_text()
        ref = f"{env.registry}/conformance/{case.name}:{parent.arg.lower()}-{number}"
        run = run_build(
            env,
            context,
            workdir / f"parent-{number}",
            dockerfile=parent.dockerfile,
            build_args={**auto_args(env, context, text), **args},
            push=ref,
        )
        result.parents.append(run)
        if run.returncode != 0:
            result.seconds = time.monotonic() - started
            return result
        args[parent.arg] = ref
    text = (context / case.dockerfile).read_text()
    wanted = case.expect
    rebuild = case.rebuild
    first_local = wanted.needs_rootfs or bool(rebuild and (rebuild.same or rebuild.differ))
    result.first = run_build(
        env,
        context,
        workdir / "first",
        dockerfile=case.dockerfile,
        build_args={**auto_args(env, context, text), **args},
        target=case.target,
        platform=case.platform,
        labels=case.labels,
        secrets=case.secrets,
        local=first_local and not wanted.error,
        oci=(wanted.needs_config or bool(rebuild and rebuild.same_image)) and not wanted.error,
    )
    if rebuild is None or result.first.returncode != 0:
        result.seconds = time.monotonic() - started
        return result
    if result.first.rootfs is not None:
        for path in (*rebuild.same, *rebuild.differ):
            file = result.first.rootfs / path
            if file.is_file():
                result.first_files[path] = file.read_bytes()
    for path, content in rebuild.change.items():
        target = context / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    for path in rebuild.remove:
        target = context / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    text = (context / case.dockerfile).read_text()
    second_args = args if rebuild.build_args is None else {**rebuild.build_args}
    for parent in case.parents:
        second_args.setdefault(parent.arg, args[parent.arg])
    result.second = run_build(
        env,
        context,
        workdir / "second",
        dockerfile=case.dockerfile,
        build_args={**auto_args(env, context, text), **second_args},
        target=case.target,
        platform=case.platform,
        labels=case.labels,
        secrets=case.secrets,
        local=rebuild.expect.needs_rootfs or bool(rebuild.same or rebuild.differ),
        oci=rebuild.expect.needs_config or rebuild.same_image,
        no_cache=rebuild.no_cache,
    )
    result.seconds = time.monotonic() - started
    return result


# --- checking -----------------------------------------------------------------------------


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def check_files(rootfs: Path, wanted: Expectations, case_dir: Path) -> list[str]:
    problems: list[str] = []
    for want in wanted.files:
        path = rootfs / want.path
        try:
            info = path.lstat()
        except FileNotFoundError:
            problems.append(f"/{want.path}: missing")
            continue
        kind = _file_type(info.st_mode)
        expected_kind = want.type or ("file" if want.content is not None else None)
        if expected_kind is not None and kind != expected_kind:
            problems.append(f"/{want.path}: a {kind}, not a {expected_kind}")
            continue
        if want.target is not None and os.readlink(path) != want.target:
            problems.append(f"/{want.path}: links to {os.readlink(path)!r}, not {want.target!r}")
        if want.content is not None or want.contains is not None:
            data = path.read_bytes()
            if want.content is not None and data != want.content.encode():
                problems.append(f"/{want.path}: content {data[:300]!r}, not {want.content!r}")
            if want.contains is not None and want.contains.encode() not in data:
                problems.append(f"/{want.path}: {data[:300]!r} lacks {want.contains!r}")
        if want.mode is not None and stat.S_IMODE(info.st_mode) != want.mode:
            problems.append(
                f"/{want.path}: mode {stat.S_IMODE(info.st_mode):04o}, not {want.mode:04o}"
            )
        if want.mtime_of is not None:
            expected_mtime = int((case_dir / want.mtime_of).stat().st_mtime)
            if int(info.st_mtime) != expected_mtime:
                got_mtime = int(info.st_mtime)
                problems.append(f"/{want.path}: mtime {got_mtime}, not {expected_mtime}")
        if want.uid is not None and info.st_uid != want.uid:
            problems.append(f"/{want.path}: uid {info.st_uid}, not {want.uid}")
        if want.gid is not None and info.st_gid != want.gid:
            problems.append(f"/{want.path}: gid {info.st_gid}, not {want.gid}")
    for absent in wanted.absent:
        if os.path.lexists(rootfs / absent):
            problems.append(f"/{absent}: present, expected absent")
    for group in wanted.hardlinks:
        inodes = set()
        for member in group:
            try:
                info = (rootfs / member).lstat()
            except FileNotFoundError:
                problems.append(f"/{member}: missing (hardlink group {list(group)})")
                continue
            inodes.add((info.st_dev, info.st_ino))
        if len(inodes) > 1:
            problems.append(f"{list(group)}: not one inode")
    return problems


def check_config(config: Mapping[str, Any], wanted: Expectations) -> list[str]:
    problems: list[str] = []
    inner = config.get("config") or {}
    for key, value in wanted.config.items():
        got = inner.get(key)
        if key == "ExposedPorts" and isinstance(value, list):
            got = sorted(got or {})
        if got != value:
            problems.append(f"config {key}: {got!r}, not {value!r}")
    env = dict(e.partition("=")[::2] for e in inner.get("Env") or [])
    for key, value in wanted.env.items():
        if env.get(key) != value:
            problems.append(f"config Env {key}: {env.get(key)!r}, not {value!r}")
    history = list(config.get("history") or [])
    if wanted.history:
        tail = history[-len(wanted.history) :]
        shown = [(h.get("created_by"), bool(h.get("empty_layer"))) for h in tail]
        if len(tail) < len(wanted.history):
            problems.append(f"history has {len(history)} entries: {shown}")
        for entry, want in zip(tail, wanted.history, strict=False):
            created_by = str(entry.get("created_by", ""))
            if "contains" in want and want["contains"] not in created_by:
                problems.append(f"history {created_by!r} lacks {want['contains']!r}")
            if "lacks" in want and want["lacks"] in created_by:
                problems.append(f"history {created_by!r} holds {want['lacks']!r}")
            if "empty_layer" in want and bool(entry.get("empty_layer")) != want["empty_layer"]:
                problems.append(f"history {created_by!r}: empty_layer is not {want['empty_layer']}")
    return problems


def _epoch(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    # RFC 3339, perhaps with nanoseconds (Python reads microseconds at most).
    main, _, rest = text.replace("Z", "+00:00").partition(".")
    zone = rest[rest.index("+") :] if "+" in rest else ""
    return int(datetime.fromisoformat(main + zone).timestamp())


def check_created(config: Mapping[str, Any], epoch: int) -> list[str]:
    """The image's created time and every history entry's are ``epoch``."""
    problems = []
    if _epoch(config.get("created")) != epoch:
        problems.append(f"created {config.get('created')!r}, not {epoch}")
    for entry in config.get("history") or []:
        if _epoch(entry.get("created")) != epoch:
            problems.append(f"history {entry.get('created_by')!r} created {entry.get('created')!r}")
    return problems


def check_build(run: BuildRun, wanted: Expectations, what: str, case_dir: Path) -> list[str]:
    """Whether one build did what the expectations say."""
    if wanted.error:
        if run.returncode == 0:
            return [f"{what}: succeeded, expected an error with {list(wanted.error)}"]
        # One line says why (a crash's traceback is not a clear error). Warnings of
        # start-up cleanups may come before it: builds of other state directories share
        # runc's state root, and `runc list` fails while one of their containers goes.
        if "Traceback (most recent call last)" in run.stderr:
            return [f"{what}: crashed\n{run.describe()}"]
        lines = [line for line in run.error_lines if line.startswith(ERROR_PREFIX)]
        if len(lines) != 1:
            return [f"{what}: {len(lines)} error lines, expected one:\n" + "\n".join(lines)]
        missing = [s for s in wanted.error if s not in lines[0]]
        if missing:
            return [f"{what}: the error {lines[0]!r} lacks {missing}"]
        return []
    if run.returncode != 0:
        return [f"{what}: failed\n{run.describe()}"]
    problems: list[str] = []
    if wanted.needs_rootfs:
        assert run.rootfs is not None
        problems += [f"{what}: {p}" for p in check_files(run.rootfs, wanted, case_dir)]
    if wanted.needs_config:
        assert run.config is not None
        problems += [f"{what}: {p}" for p in check_config(run.config, wanted)]
    if wanted.created is not None:
        assert run.config is not None
        problems += [f"{what}: {p}" for p in check_created(run.config, wanted.created)]
    names = run.step_cached()
    for step in wanted.steps:
        if step not in names:
            problems.append(f"{what}: no step {step!r} in {sorted(names)}")
    return problems


def _matching(steps: Mapping[str, bool], needle: str) -> list[tuple[str, bool]]:
    """Steps whose name holds ``needle``, ignoring case (instructions may be lower case)."""
    return [(name, cached) for name, cached in steps.items() if needle.lower() in name.lower()]


def check_case(case: Case, result: CaseResult) -> list[str]:
    """Everything the case expects that its result does not hold (empty: it passes)."""
    for number, parent in enumerate(result.parents):
        if parent.returncode != 0:
            return [f"parent image {number} ({case.parents[number].dockerfile}) failed"]
    assert result.first is not None
    problems = check_build(result.first, case.expect, "build", case.directory)
    rebuild = case.rebuild
    if rebuild is None or problems:
        return problems
    second = result.second
    assert second is not None
    problems += check_build(second, rebuild.expect, "rebuild", case.directory)
    if second.returncode != 0:
        return problems
    steps = second.step_cached()
    first_steps = result.first.step_cached()
    for needle in rebuild.cached:
        # A step the result does not need again is not even shown (its stage's output
        # came from the cache as a whole): it ran no more than a cached one.
        found = _matching(steps, needle)
        if not found and not _matching(first_steps, needle):
            problems.append(f"no step named like {needle!r} in {sorted(first_steps)}")
        problems += [f"rebuild: {n!r} ran again, expected cached" for n, c in found if not c]
    for needle in rebuild.rerun:
        found = _matching(steps, needle)
        if not found:
            problems.append(f"rebuild: no step named like {needle!r} in {sorted(steps)}")
        problems += [f"rebuild: {n!r} was cached, expected to run again" for n, c in found if c]
    if rebuild.same_image and result.first.index_json != second.index_json:
        problems.append(
            f"rebuild: another image ({result.first.index_json!r} -> {second.index_json!r})"
        )
    for path in (*rebuild.same, *rebuild.differ):
        assert second.rootfs is not None
        before = result.first_files.get(path)
        file = second.rootfs / path
        after = file.read_bytes() if file.is_file() else None
        if before is None or after is None:
            problems.append(f"rebuild: /{path} missing (first {before!r}, second {after!r})")
        elif path in rebuild.same and before != after:
            problems.append(f"rebuild: /{path} changed ({before!r} -> {after!r}), expected same")
        elif path in rebuild.differ and before == after:
            problems.append(f"rebuild: /{path} unchanged ({before!r}), expected a new one")
    return problems


def cleanup(result: CaseResult) -> None:
    """Drop the builds' root filesystems (a case's result is checked by then)."""
    for run in (*result.parents, result.first, result.second):
        if run is not None and run.rootfs is not None:
            shutil.rmtree(run.rootfs, ignore_errors=True)


def describe(result: CaseResult) -> str:
    runs: Sequence[BuildRun | None] = (*result.parents, result.first, result.second)
    return "\n".join(r.describe() for r in runs if r is not None)
