"""ARG scoping, expansion per instruction and stage resolution (BuildPlan)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from lazybuild.errors import UsageError
from lazybuild.frontend.dockerfile import (
    Add,
    Arg,
    BaseRef,
    BuildPlan,
    Copy,
    Env,
    Expose,
    From,
    Label,
    Onbuild,
    ParseError,
    ResolvedStage,
    Run,
    ShellForm,
    User,
    Volume,
    Workdir,
    plan_build,
)
from lazybuild.oci.platform import Platform

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")


def plan(
    text: str,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    **options: object,
) -> BuildPlan:
    return plan_build(
        text,
        build_args=build_args,
        target=target,
        target_platform=ARM64,
        build_platform=AMD64,
        **options,  # type: ignore[arg-type]
    )


def env_of(stage: ResolvedStage) -> dict[str, str]:
    return {pair.key: pair.value for pair in stage.env}


def labels(stage: ResolvedStage) -> dict[str, str]:
    return {
        pair.key: pair.value
        for step in stage.steps
        if isinstance(step.instruction, Label)
        for pair in step.instruction.pairs
    }


# ---------------------------------------------------------------- ARG scoping


def test_global_arg_only_in_from_until_redeclared() -> None:
    result = plan(
        "ARG IMG=alpine\nARG V=1\nFROM $IMG\nLABEL before=[$V]\nARG V\nLABEL after=[$V]\n"
    )
    stage = result.target
    assert stage.base == BaseRef("image", "alpine")
    assert labels(stage) == {"before": "[]", "after": "[1]"}


@pytest.mark.parametrize(
    ("global_decl", "stage_decl", "build_args", "expected"),
    [
        ("ARG V=global", "ARG V", {}, "global"),
        ("ARG V=global", "ARG V", {"V": "cli"}, "cli"),
        ("ARG V=global", "ARG V=stage", {}, "stage"),
        ("ARG V=global", "ARG V=stage", {"V": "cli"}, "cli"),
        ("ARG V", "ARG V", {}, ""),
        ("ARG V", "ARG V", {"V": "cli"}, "cli"),
        ("", "ARG V", {"V": "cli"}, "cli"),
        ("", "ARG V=stage", {}, "stage"),
        ("", "ARG V", {}, ""),
    ],
)
def test_arg_precedence(
    global_decl: str, stage_decl: str, build_args: dict[str, str], expected: str
) -> None:
    result = plan(f"{global_decl}\nFROM a\n{stage_decl}\nLABEL v=$V\n", build_args)
    assert labels(result.target) == {"v": expected}


def test_unset_arg_is_not_in_run_env_but_empty_arg_is() -> None:
    result = plan("FROM a\nARG UNSET\nARG EMPTY=\nRUN true\n")
    run_step = result.target.steps[-1]
    assert [(pair.key, pair.value) for pair in run_step.build_args] == [("EMPTY", "")]


def test_env_overrides_arg_of_same_name() -> None:
    result = plan("FROM a\nENV V=env\nARG V=arg\nLABEL v=$V\nRUN true\n", {"V": "cli"})
    assert labels(result.target) == {"v": "env"}
    assert result.target.steps[-1].build_args == ()


def test_arg_applies_from_the_next_declaration_on() -> None:
    result = plan("FROM a\nARG A=1 B=$A\nLABEL b=$B\n")
    assert labels(result.target) == {"b": "1"}


def test_args_do_not_cross_stages_but_env_does() -> None:
    result = plan("FROM a AS one\nARG X=1\nENV Y=2\nFROM one\nLABEL x=[$X] y=[$Y]\n")
    assert labels(result.target) == {"x": "[]", "y": "[2]"}
    assert env_of(result.target) == {"Y": "2"}


def test_global_arg_defaults_see_earlier_globals_and_platform() -> None:
    result = plan("ARG A=x\nARG B=$A-$TARGETARCH\nFROM img:$B\n")
    assert result.target.base.ref == "img:x-arm64"
    assert dict((p.key, p.value) for p in result.global_args) == {"A": "x", "B": "x-arm64"}


def test_platform_args_global_automatic_stage_declared() -> None:
    text = (
        "FROM --platform=$BUILDPLATFORM a\n"
        "LABEL before=[$TARGETARCH]\n"
        "ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDOS BUILDARCH\n"
        "LABEL p=$TARGETPLATFORM os=$TARGETOS arch=$TARGETARCH v=$TARGETVARIANT\n"
        "LABEL b=$BUILDPLATFORM bos=$BUILDOS barch=$BUILDARCH\n"
    )
    stage = plan(text).target
    assert stage.platform == "linux/amd64"
    assert labels(stage) == {
        "before": "[]",
        "p": "linux/arm64/v8",
        "os": "linux",
        "arch": "arm64",
        "v": "v8",
        "b": "linux/amd64",
        "bos": "linux",
        "barch": "amd64",
    }


def test_unused_build_args_reported_except_proxy_and_platform() -> None:
    result = plan(
        "ARG USED_GLOBAL\nFROM a\nARG USED_STAGE\n",
        {
            "USED_GLOBAL": "1",
            "USED_STAGE": "2",
            "UNUSED": "3",
            "HTTP_PROXY": "http://p",
            "no_proxy": "x",
            "TARGETARCH": "arm",
        },
    )
    assert result.unused_build_args == ("UNUSED",)
    assert [(p.key, p.value) for p in result.proxy_env] == [
        ("HTTP_PROXY", "http://p"),
        ("http_proxy", "http://p"),
        ("NO_PROXY", "x"),
        ("no_proxy", "x"),
    ]
    assert labels(result.target) == {}


def test_proxy_args_set_both_spellings_from_either() -> None:
    # BuildKit's proxyEnvFromBuildArgs: names match in any case, read in sorted order (so
    # the lower-case spelling wins when both are given); an empty value sets nothing.
    given = {
        "https_proxy": "https://p",
        "FTP_PROXY": "ftp://upper",
        "ftp_proxy": "ftp://lower",
        "All_Proxy": "socks://p",
        "NO_PROXY": "",
    }
    result = plan("FROM a\nRUN true\n", given)
    assert [(p.key, p.value) for p in result.proxy_env] == [
        ("HTTPS_PROXY", "https://p"),
        ("https_proxy", "https://p"),
        ("FTP_PROXY", "ftp://lower"),
        ("ftp_proxy", "ftp://lower"),
        ("ALL_PROXY", "socks://p"),
        ("all_proxy", "socks://p"),
    ]
    assert result.unused_build_args == ()
    assert result.target.steps[-1].build_args == ()


def test_targetstage_is_the_target_name() -> None:
    # BuildKit's testTargetStageNameArg: usable once declared, the --target given, else the
    # last stage's name, else "default".
    text = (
        "FROM a AS base\nLABEL before=[$TARGETSTAGE]\nARG TARGETSTAGE\nLABEL t=$TARGETSTAGE\n"
        "FROM base AS foo\nFROM base\n"
    )
    assert labels(plan(text, target="foo").stage(0)) == {"before": "[]", "t": "foo"}
    assert labels(plan(text).stage(0)) == {"before": "[]", "t": "default"}
    named_last = text + "FROM base AS last\n"
    assert labels(plan(named_last).stage(0))["t"] == "last"
    global_scope = plan("ARG X=$TARGETSTAGE\nFROM img:$X AS web\n")
    assert global_scope.target.base.ref == "img:web"


def test_proxy_args_not_usable_in_expansion_without_declaration() -> None:
    result = plan("FROM a\nLABEL p=[$HTTP_PROXY]\nRUN true\n", {"HTTP_PROXY": "x"})
    assert labels(result.target) == {"p": "[]"}
    assert result.target.steps[-1].build_args == ()


# ---------------------------------------------------- expansion per instruction


def test_expansion_applies_to_supported_instructions_only() -> None:
    text = (
        "FROM a\n"
        "ARG D=/data P=8080 U=app N=x\n"
        "ENV E=$D\n"
        "WORKDIR $D/w\n"
        "USER $U\n"
        "EXPOSE $P\n"
        "VOLUME $D/v\n"
        'VOLUME ["$D/j"]\n'
        "COPY --from=x --chown=$U --chmod=${M:-644} $D/s $D/d\n"
        "ADD --checksum=sha256:$N $D/a $D/b\n"
        "RUN --mount=type=cache,target=$D/c,id=$N echo $D\n"
        'CMD ["$D"]\n'
        "ENTRYPOINT echo $D\n"
        "ONBUILD RUN echo $D\n"
        "HEALTHCHECK CMD echo $D\n"
        'SHELL ["/bin/sh", "$D"]\n'
        "STOPSIGNAL ${SIG:-9}\n"
    )
    steps = {type(s.instruction).__name__: s.instruction for s in plan(text).target.steps}
    assert isinstance(env := steps["Env"], Env) and env.pairs[0].value == "/data"
    assert isinstance(workdir := steps["Workdir"], Workdir) and workdir.path == "/data/w"
    assert isinstance(user := steps["User"], User) and user.user == "app"
    assert isinstance(expose := steps["Expose"], Expose) and expose.ports == ("8080",)
    assert isinstance(volume := steps["Volume"], Volume) and volume.paths == ("/data/j",)
    copy = steps["Copy"]
    assert isinstance(copy, Copy)
    assert (copy.from_, copy.chown, copy.chmod, copy.sources, copy.dest) == (
        "x",
        "app",
        "644",
        ("/data/s",),
        "/data/d",
    )
    add = steps["Add"]
    assert isinstance(add, Add) and add.checksum == "sha256:x" and add.dest == "/data/b"
    run = steps["Run"]
    assert isinstance(run, Run)
    assert run.command == ShellForm("echo $D")  # the shell expands RUN, not the frontend
    assert (run.mounts[0].target, run.mounts[0].id) == ("/data/c", "x")
    assert steps["Cmd"].original.endswith('["$D"]')
    assert steps["Onbuild"].original == "ONBUILD RUN echo $D"
    assert steps["StopSignal"].signal == "9"  # type: ignore[attr-defined]


def test_env_same_line_sees_previous_values_only() -> None:
    stage = plan("FROM a\nENV A=1\nENV A=2 B=$A\n").target
    assert env_of(stage) == {"A": "2", "B": "1"}


def test_image_env_from_resolver() -> None:
    seen: list[tuple[str, str | None]] = []

    def image_env(ref: str, platform: str | None) -> list[tuple[str, str]]:
        seen.append((ref, platform))
        return [("GOPATH", "/go"), ("PATH", "/usr/bin")]

    stage = plan(
        "FROM --platform=linux/amd64 golang\nWORKDIR $GOPATH/src\nENV PATH=/x:$PATH\n",
        image_env=image_env,
    ).target
    assert seen == [("golang", "linux/amd64")]
    assert isinstance(workdir := stage.steps[0].instruction, Workdir)
    assert workdir.path == "/go/src"
    assert env_of(stage)["PATH"] == "/x:/usr/bin"


def test_copy_heredoc_expansion_keeps_quotes() -> None:
    text = 'FROM a\nARG N=w\nCOPY <<EOF <<"RAW" /d/\n"$N" \\$N\nEOF\n$N\nRAW\n'
    copy = plan(text).target.steps[-1].instruction
    assert isinstance(copy, Copy)
    assert [h.content for h in copy.heredocs] == ['"w" $N\n', "$N\n"]


def test_copy_heredoc_expands_between_single_quotes() -> None:
    # BuildKit expands heredoc bodies with quotes as plain text (SkipProcessQuotes).
    text = "FROM a\nARG name=world\nCOPY <<EOF /greeting\necho '${name}' \"$name\"\nEOF\n"
    copy = plan(text).target.steps[-1].instruction
    assert isinstance(copy, Copy)
    assert copy.heredocs[0].content == "echo 'world' \"world\"\n"


def test_pattern_expansion_in_from_env_and_copy() -> None:
    text = (
        "ARG IMAGE=repo/app:1.2.3\nFROM ${IMAGE%:*}:${IMAGE##*:}-slim\n"
        "ARG FILE=archive.tar.gz\nENV STEM=${FILE%%.*} EXT=${FILE#*.} DOTS=${FILE//./_}\n"
        "COPY ${FILE/archive/data} /\n"
    )
    stage = plan(text).target
    assert stage.base.ref == "repo/app:1.2.3-slim"
    assert env_of(stage) == {"STEM": "archive", "EXT": "tar.gz", "DOTS": "archive_tar_gz"}
    copy = stage.steps[-1].instruction
    assert isinstance(copy, Copy)
    assert copy.sources == ("data.tar.gz",)


def test_expansion_error_names_the_line() -> None:
    with pytest.raises(ParseError, match=r"Dockerfile:3: V: is required"):
        plan("FROM a\n\nWORKDIR ${V:?is required}\n")


def test_blank_base_name() -> None:
    with pytest.raises(ParseError, match=r"Dockerfile:2: base name \(\$B\) should not be blank"):
        plan("ARG B\nFROM $B\n")


# ------------------------------------------------------------ stage resolution


def test_stage_references_by_name_index_and_image() -> None:
    text = (
        "FROM alpine AS Base\n"
        "FROM scratch AS files\n"
        "FROM BASE\n"
        "COPY --from=files /a /a\n"
        "COPY --from=0 /b /b\n"
        "COPY --from=busybox:1 /c /c\n"
        "RUN --mount=from=files,target=/m --mount=type=bind,target=/ctx true\n"
    )
    result = plan(text)
    assert [s.index for s in result.stages] == [0, 1, 2]
    base, files, final = result.stages
    assert base.base == BaseRef("image", "alpine")
    assert files.base == BaseRef("scratch", "scratch")
    assert final.base == BaseRef("stage", "base", 0)
    assert final.dependencies == (0, 1)
    assert [s.copy_from for s in final.steps[:3]] == [
        BaseRef("stage", "files", 1),
        BaseRef("stage", "0", 0),
        BaseRef("image", "busybox:1"),
    ]
    assert final.steps[3].mount_from == (BaseRef("stage", "files", 1), None)


def test_target_builds_only_needed_stages_in_dependency_order() -> None:
    text = (
        "FROM a AS unused\nRUN ${BROKEN:?never expanded}\n"
        "FROM a AS lib\n"
        "FROM a AS tool\n"
        "FROM lib AS app\nCOPY --from=tool /t /t\n"
        "FROM app AS debug\n"
    )
    result = plan(text, target="APP")
    assert [s.name for s in result.stages] == ["lib", "tool", "app"]
    assert result.target.name == "app"


def test_copy_from_a_later_stage_is_buildkits_error() -> None:
    # BuildKit's testOutOfOrderStage: stages are built in the order they are written.
    for source in ("second", "1"):
        with pytest.raises(ParseError) as caught:
            plan(f"FROM a AS first\nCOPY --from={source} /x /x\nFROM b AS second\n", target="first")
        assert str(caught.value) == (
            f'Dockerfile:2: cannot copy from stage "{source}", it needs to be defined before '
            'current stage "first"'
        )
    with pytest.raises(ParseError, match='before current stage "stage-0"'):
        plan("FROM a\nCOPY --from=later / /out\nFROM b AS later\nFROM 0\n")


def test_image_lines_name_where_each_image_is_used_first() -> None:
    # For errors resolving an image (BuildKit's testErrorsSourceMap: Dockerfile:3).
    result = plan(
        "FROM scratch\nENV foo=bar\nCOPY --from=reg/invalid foo bar\n"
        "RUN --mount=from=tools:1,target=/t --mount=from=reg/invalid,target=/u true\n"
        "FROM base:1 AS second\nCOPY --from=0 / /\n",
        target=None,
    )
    assert result.image_lines() == {"base:1": 5, "reg/invalid": 3, "tools:1": 4}


def test_sandbox_hostname_build_arg_is_the_plans_hostname() -> None:
    result = plan("FROM a\nRUN hostname\n", {"BUILDKIT_SANDBOX_HOSTNAME": "foo"})
    assert result.hostname == "foo"
    assert result.unused_build_args == ()
    assert plan("FROM a\n").hostname == ""


def test_from_a_later_stage_name_is_an_image() -> None:
    result = plan("FROM later AS first\nFROM a AS later\n", target="first")
    assert result.target.base == BaseRef("image", "later")


def test_errors_in_stage_resolution() -> None:
    with pytest.raises(UsageError, match="target stage 'nope' could not be found"):
        plan("FROM a\n", target="nope")
    with pytest.raises(UsageError, match=r"could not be found in Dockerfile$"):
        plan("FROM a AS build\n", target="nope")
    # BuildKit's suggestion wording, for a name fewer than 3 edits away.
    with pytest.raises(UsageError, match=r"'buidl' could not .* \(did you mean build\?\)$"):
        plan("FROM a AS build\nFROM a AS test\n", target="buidl")
    with pytest.raises(ParseError, match="Dockerfile:2: duplicate stage name 'x'"):
        plan("FROM a AS x\nFROM b AS X\n")
    with pytest.raises(ParseError, match="Dockerfile:2: circular dependency detected on stage"):
        plan("FROM a AS x\nCOPY --from=x /a /b\n")
    with pytest.raises(ParseError, match="circular dependency detected on stage"):
        plan("FROM a AS x\nCOPY --from=y /a /b\nFROM a AS y\nCOPY --from=x /a /b\n")
    with pytest.raises(ParseError, match="Dockerfile:2: stage index 1 is not a previous stage"):
        plan("FROM a\nFROM 1\n")
    with pytest.raises(ParseError, match="stage index 5 is not a previous stage"):
        plan("FROM a\nCOPY --from=5 /a /b\n")


def test_arg_steps_record_resolved_values() -> None:
    step = plan("FROM a\nARG A B=1\n", {"A": "x"}).target.steps[0]
    assert isinstance(arg := step.instruction, Arg)
    assert [(d.name, d.default) for d in arg.declarations] == [("A", "x"), ("B", "1")]


def test_from_instruction_is_not_a_step() -> None:
    assert not any(isinstance(s.instruction, From) for s in plan("FROM a\nRUN x\n").target.steps)


def test_stage_platform_inherited_from_parent_stage() -> None:
    result = plan("FROM --platform=linux/s390x a AS one\nFROM one\n")
    assert result.target.platform == "linux/s390x"


def test_defaults_to_host_platform() -> None:
    result = plan_build("FROM a\nARG TARGETPLATFORM\nLABEL p=$TARGETPLATFORM\n")
    assert labels(result.target)["p"].startswith("linux/")


def test_mount_values_from_variables_are_checked_after_expansion() -> None:
    run = plan("FROM a\nARG T=cache M=0700\nRUN --mount=type=$T,target=/c,mode=$M true\n")
    step = run.target.steps[-1].instruction
    assert isinstance(step, Run)
    assert (step.mounts[0].type, step.mounts[0].mode) == ("cache", 0o700)
    with pytest.raises(ParseError, match="Dockerfile:3: unsupported mount type 'nfs'"):
        plan("FROM a\nARG T=nfs\nRUN --mount=type=$T,target=/c true\n")


def test_stage_onbuild_trigger_copying_from_another_stage_depends_on_it() -> None:
    # BuildKit's testOnBuildInheritedStageWithFrom: the trigger's --from is resolved where
    # it fires, so the stage built on the base needs the stage it names.
    result = plan(
        "FROM a AS src\nRUN x\nFROM b AS base\nONBUILD COPY --from=src /in/file /out/foo\n"
        "FROM base AS mid\nRUN cp /out/foo /out/bar\nFROM scratch\nCOPY --from=mid /out/bar /\n"
    )
    assert [(s.name, s.dependencies) for s in result.stages] == [
        ("src", ()),
        ("base", ()),
        ("mid", (0, 1)),
        (None, (2,)),
    ]
    copy = result.stage(2).steps[0].instruction
    assert isinstance(copy, Copy)
    assert (copy.from_, copy.dest) == ("src", "/out/foo")


def test_onbuild_heredoc_trigger_fires_as_a_heredoc() -> None:
    # BuildKit's testOnBuildHeredoc: the trigger is stored with its body and delimiter.
    result = plan("FROM a AS base\nONBUILD RUN <<EOF\necho hi >> /dest\nEOF\nFROM base\n")
    trigger = result.stage(0).steps[0].instruction
    assert isinstance(trigger, Onbuild)
    assert trigger.expression == "RUN <<EOF\necho hi >> /dest\nEOF"
    run = result.target.steps[0].instruction
    assert isinstance(run, Run)
    script = run.heredoc_script
    assert script is not None
    assert script.body == "echo hi >> /dest\n"


def test_broken_stage_onbuild_trigger_names_the_stage_at_the_from_line() -> None:
    with pytest.raises(ParseError) as caught:
        plan("FROM a AS base\nONBUILD COPY --bogus=1 x /\nFROM base\n")
    assert str(caught.value) == (
        "Dockerfile:3: ONBUILD trigger 'COPY --bogus=1 x /' of stage base: unknown flag: bogus"
    )
