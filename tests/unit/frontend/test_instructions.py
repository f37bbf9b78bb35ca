"""AST → typed instructions: argument forms, flags and errors with their line."""

from __future__ import annotations

import pytest

from lazybuild.frontend.dockerfile import (
    Add,
    Arg,
    ArgDeclaration,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    From,
    Healthcheck,
    Instruction,
    KeyValue,
    Label,
    Maintainer,
    Onbuild,
    ParseError,
    Run,
    RunMount,
    Shell,
    ShellForm,
    StopSignal,
    User,
    Volume,
    Workdir,
    parse,
    parse_instruction,
    parse_stages,
)


def one(line: str) -> Instruction:
    return parse_instruction(parse(line + "\n").nodes[0])


def test_from_forms() -> None:
    assert one("FROM alpine") == From(
        base="alpine", stage_name=None, platform=None, location=one("FROM a").location,
        original="FROM alpine",
    )  # fmt: skip
    named = one("FROM --platform=$BUILDPLATFORM golang:1.22 As Builder")
    assert isinstance(named, From)
    assert (named.base, named.stage_name, named.platform) == (
        "golang:1.22",
        "builder",
        "$BUILDPLATFORM",
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FROM", "FROM requires either one argument, or three"),
        ("FROM a b", "FROM requires either one argument, or three"),
        ("FROM a AS 1st", "invalid name for build stage"),
        ("FROM a AS b@c", "invalid name for build stage"),
        ("FROM --platform a", "missing a value on flag: platform"),
        ("FROM --foo=bar a", "unknown flag: foo"),
    ],
)
def test_from_errors(line: str, message: str) -> None:
    with pytest.raises(ParseError, match=f"Dockerfile:1: {message}"):
        one(line)


def test_run_forms_and_flags() -> None:
    shell = one("RUN --network=none echo $HOME")
    assert isinstance(shell, Run)
    assert shell.command == ShellForm("echo $HOME")
    assert shell.network == "none"
    exec_form = one('RUN ["echo", "$HOME"]')
    assert isinstance(exec_form, Run)
    assert exec_form.command == ExecForm(("echo", "$HOME"))
    assert exec_form.network == "default"
    # Not valid JSON: shell form, as the reference says.
    broken = one("RUN [echo, hi]")
    assert isinstance(broken, Run)
    assert broken.command == ShellForm("[echo, hi]")


def test_run_mounts_repeat() -> None:
    run = one("RUN --mount=type=cache,target=/c --mount=type=tmpfs,dst=/t,size=1m true")
    assert isinstance(run, Run)
    assert run.mounts == (
        RunMount(type="cache", target="/c", id="/c", sharing="shared"),
        RunMount(type="tmpfs", target="/t", size=1024 * 1024),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN", "RUN requires at least one argument"),
        ("RUN --network=bridge x", "network mode 'bridge' not supported"),
        ("RUN --mount=type=nfs,target=/x x", "unsupported mount type 'nfs'"),
        ("RUN --mount=type=cache x", "mount type=cache needs a target"),
        ("RUN --mount=type=bind,target=/x,bogus=1 x", "unexpected key 'bogus'"),
        ("RUN --mount=type=bind,target=/x,sharing=locked x", "invalid cache sharing"),
        ("RUN --mount=type=secret,from=a,id=x x", "secret mount should not have a from"),
        ("RUN --mount=type=cache,target=/x,uid=root x", "invalid value for uid"),
        ('RUN ["a", 1]', "RUN: JSON form must be an array of strings"),
        ("RUN --mount x", "missing a value on flag: mount"),
    ],
)
def test_run_errors(line: str, message: str) -> None:
    with pytest.raises(ParseError, match=f"Dockerfile:1: {message}"):
        one(line)


_NO_VARIABLE_FROM = (
    "variable expansion is not supported for --from, define a new stage with FROM "
    "using ARG from global scope as a workaround"
)
_NO_VARIABLE_MOUNT_FROM = "'from' doesn't support variable expansion, define alias stage instead"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # BuildKit's testDockerfileCopyFromArgs and testMountFromError.
        ("COPY --from=$FOO . .", _NO_VARIABLE_FROM),
        ("COPY --from=img:${TAG} /a /b", _NO_VARIABLE_FROM),
        ("RUN --mount=from=$ttt,type=cache,target=/tmp ls", _NO_VARIABLE_MOUNT_FROM),
        ("RUN --mount=type=bind,target=/m,FROM=${S} ls", _NO_VARIABLE_MOUNT_FROM),
    ],
)
def test_from_flags_take_no_variables(line: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        one(line)
    assert str(caught.value) == f"Dockerfile:1: {message}"


def test_from_flags_without_variables_are_kept() -> None:
    copy = one("COPY --from=img$ /a /b")  # a trailing "$" is no variable
    assert isinstance(copy, Copy)
    assert copy.from_ == "img$"
    run = one("RUN --mount=from=build,target=/m,source=$DIR ls")
    assert isinstance(run, Run)


def test_copy_and_add_flags() -> None:
    copy = one("COPY --from=build --chown=1:2 --chmod=0755 --link --parents --exclude=*.md a b /d/")
    assert isinstance(copy, Copy)
    assert (copy.sources, copy.dest, copy.from_) == (("a", "b"), "/d/", "build")
    assert (copy.chown, copy.chmod, copy.link, copy.parents) == ("1:2", "0755", True, True)
    assert copy.exclude == ("*.md",)
    add = one("ADD --checksum=sha256:abc --keep-git-dir=true --link=false https://x/y /y")
    assert isinstance(add, Add)
    assert (add.checksum, add.keep_git_dir, add.link, add.sources) == (
        "sha256:abc",
        True,
        False,
        ("https://x/y",),
    )
    json_form = one('COPY ["a b", "c"]')
    assert isinstance(json_form, Copy)
    assert (json_form.sources, json_form.dest) == (("a b",), "c")


def test_copy_heredoc_sources_are_separated() -> None:
    copy = parse_instruction(parse("COPY <<a.txt src.txt /dst/\nbody\na.txt\n").nodes[0])
    assert isinstance(copy, Copy)
    assert copy.sources == ("src.txt",)
    assert [h.name for h in copy.heredocs] == ["a.txt"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY a", "COPY requires at least two arguments"),
        ("ADD a", "ADD requires at least two arguments"),
        ("ADD --from=x a b", "unknown flag: from"),
        ("COPY --checksum=x a b", "unknown flag: checksum"),
        ("COPY --link=maybe a b", "expecting boolean value for flag link"),
        ("COPY --from=a --from=b x y", "duplicate flag specified: from"),
    ],
)
def test_copy_errors(line: str, message: str) -> None:
    with pytest.raises(ParseError, match=f"Dockerfile:1: {message}"):
        one(line)


def test_env_and_label_forms() -> None:
    legacy = one("ENV NAME some value  here")
    assert isinstance(legacy, Env)
    assert legacy.pairs == (KeyValue("NAME", "some value  here"),)
    modern = one('ENV A=1 B="two words" C=x\\ y D=')
    assert isinstance(modern, Env)
    # Quotes are removed during expansion, not here.
    assert modern.pairs == (
        KeyValue("A", "1"),
        KeyValue("B", '"two words"'),
        KeyValue("C", "x\\ y"),
        KeyValue("D", ""),
    )
    label = one('LABEL "a b"=c d=e')
    assert isinstance(label, Label)
    assert label.pairs == (KeyValue('"a b"', "c"), KeyValue("d", "e"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ENV", "ENV requires at least one argument"),
        ("ENV A", "ENV must have two arguments"),
        ("ENV A=1 B", "syntax error - can't find = in 'B'"),
        ("LABEL =x", "LABEL names can not be blank"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
    ],
)
def test_key_value_errors(line: str, message: str) -> None:
    with pytest.raises(ParseError, match=f"Dockerfile:1: {message}"):
        one(line)


def test_arg_several_per_line() -> None:
    arg = one("ARG A B=2 C=")
    assert isinstance(arg, Arg)
    assert arg.declarations == (
        ArgDeclaration("A", None),
        ArgDeclaration("B", "2"),
        ArgDeclaration("C", ""),
    )


def test_simple_instructions() -> None:
    assert isinstance(w := one("WORKDIR /a b"), Workdir) and w.path == "/a b"
    assert isinstance(u := one("USER app:staff"), User) and u.user == "app:staff"
    assert isinstance(s := one("STOPSIGNAL SIGKILL"), StopSignal) and s.signal == "SIGKILL"
    assert isinstance(e := one("EXPOSE 80 443/udp"), Expose) and e.ports == ("80", "443/udp")
    assert isinstance(v := one('VOLUME ["/a", "/b"]'), Volume) and v.paths == ("/a", "/b")
    assert isinstance(v := one("VOLUME /a /b"), Volume) and v.paths == ("/a", "/b")
    assert isinstance(m := one("MAINTAINER me <me@x>"), Maintainer) and m.name == "me <me@x>"
    assert isinstance(c := one('CMD ["a"]'), Cmd) and c.command == ExecForm(("a",))
    assert isinstance(c := one("CMD a b"), Cmd) and c.command == ShellForm("a b")
    assert isinstance(c := one("CMD"), Cmd) and c.command == ShellForm("")
    assert isinstance(p := one("ENTRYPOINT []"), Entrypoint) and p.command == ExecForm(())
    assert isinstance(sh := one('SHELL ["pwsh", "-c"]'), Shell) and sh.args == ("pwsh", "-c")
    assert isinstance(o := one("ONBUILD  RUN make"), Onbuild) and o.expression == "RUN make"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("SHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("WORKDIR", "WORKDIR requires at least one argument"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("ONBUILD ONBUILD RUN x", "chaining ONBUILD"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD NOPE x", "unknown instruction in ONBUILD: NOPE"),
        ("USER --flag=x root", "unknown flag: flag"),
    ],
)
def test_simple_errors(line: str, message: str) -> None:
    with pytest.raises(ParseError, match=f"Dockerfile:1: {message}"):
        one(line)


def test_healthcheck() -> None:
    check = one(
        "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s "
        "--start-interval=1.5s --retries=0 CMD curl -f http://localhost/"
    )
    assert isinstance(check, Healthcheck)
    assert check.test == ShellForm("curl -f http://localhost/")
    assert check.interval_ns == 90 * 10**9
    assert check.timeout_ns == 500 * 10**6
    assert check.start_period_ns == 2 * 10**9
    assert check.start_interval_ns == 1_500_000_000
    assert check.retries == 0
    exec_check = one('HEALTHCHECK cmd ["true"]')
    assert isinstance(exec_check, Healthcheck)
    assert exec_check.test == ExecForm(("true",))
    assert exec_check.interval_ns is None
    none = one("HEALTHCHECK none")
    assert isinstance(none, Healthcheck)
    assert none.test is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK --retries=1 NONE", "options cannot be used with HEALTHCHECK NONE"),
        ("HEALTHCHECK RUN x", "unknown type 'RUN' in HEALTHCHECK"),
        ("HEALTHCHECK CMD", "missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=5 CMD x", "invalid duration for --interval"),
        ("HEALTHCHECK --timeout=10us CMD x", "--timeout cannot be less than 1ms"),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative"),
        ("HEALTHCHECK --retries=two CMD x", "invalid value for --retries"),
        ("HEALTHCHECK --bogus=1 CMD x", "unknown flag: bogus"),
    ],
)
def test_healthcheck_errors(line: str, message: str) -> None:
    with pytest.raises(ParseError, match=f"Dockerfile:1: {message}"):
        one(line)


def test_stages_split_and_global_args() -> None:
    text = "ARG A\nARG B=1\nFROM x AS one\nRUN a\nFROM one\nENV k=v\nRUN b\n"
    global_args, stages = parse_stages(parse(text))
    assert [a.declarations[0].name for a in global_args] == ["A", "B"]
    assert [(s.index, s.name, s.base, len(s.commands)) for s in stages] == [
        (0, "one", "x", 1),
        (1, None, "one", 2),
    ]
    assert (stages[1].location.start_line, stages[1].location.end_line) == (5, 7)


def test_only_arg_before_from() -> None:
    with pytest.raises(ParseError, match="Dockerfile:2: RUN before the first FROM"):
        parse_stages(parse("ARG A\nRUN x\nFROM a\n"))


def test_no_from() -> None:
    with pytest.raises(ParseError, match="no FROM instruction"):
        parse_stages(parse("ARG A\n"))


def test_error_line_is_the_instruction_start() -> None:
    with pytest.raises(ParseError, match="Dockerfile:3: unknown flag: nope"):
        parse_stages(parse("FROM a\n\nCOPY \\\n  --nope=1 \\\n  a b\n"))


def test_errors_name_the_file() -> None:
    with pytest.raises(ParseError, match=r"^build/app.Dockerfile:2: unknown flag: x$"):
        parse_stages(parse("FROM a\nRUN --x=1 y\n", filename="build/app.Dockerfile"))


def test_run_heredoc_script_and_shell_text() -> None:
    script = parse_instruction(parse("RUN <<EOF\necho a\nEOF\n").nodes[0])
    assert isinstance(script, Run)
    assert script.heredoc_script is not None
    assert script.heredoc_script.content == "echo a\n"
    piped = parse_instruction(parse("RUN python3 <<EOF > /out\nprint(1)\nEOF\n").nodes[0])
    assert isinstance(piped, Run)
    assert piped.heredoc_script is None
    assert piped.shell_text_with_heredocs() == "python3 <<EOF > /out\nprint(1)\nEOF\n"
