"""``plan_to_graph``: every shared Dockerfile converts, and the ops are BuildKit's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lazybuild.frontend.dockerfile import ParseError, plan_build
from lazybuild.frontend.dockerfile.imageconfig import ImageConfigState
from lazybuild.frontend.dockerfile.tograph import GraphResult, plan_to_graph
from lazybuild.graph import (
    Copy,
    Definition,
    Exec,
    File,
    HttpSource,
    ImageSource,
    LocalSource,
    Merge,
    Mkdir,
    Mkfile,
    Operation,
    SecretEnv,
    decode_op,
)
from lazybuild.oci.platform import Platform

DOCKERFILES = Path(__file__).resolve().parents[2] / "dockerfiles"
CASES = sorted(p.name for p in DOCKERFILES.iterdir() if (p / "Dockerfile").is_file())
PLATFORM = Platform("linux", "amd64")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["bash"]},
    "history": [{"created_by": "# debian.sh", "comment": "debuerreotype"}],
}


def _base_config(ref: str, platform: str) -> dict[str, Any]:
    return DEBIAN


def _convert(text: str, **options: Any) -> GraphResult:
    plan = plan_build(
        text,
        build_args=options.pop("build_args", None),
        target=options.pop("target", None),
        target_platform=PLATFORM,
        build_platform=PLATFORM,
        image_env=lambda ref, platform: [("PATH", DEFAULT_PATH)],
    )
    return plan_to_graph(
        plan, base_config=options.pop("base_config", _base_config), target_platform="linux/amd64"
    )


def _ops(definition: Definition) -> list[Operation]:
    return [decode_op(data) for data in definition.ops]


def _of(definition: Definition, kind: type[Any]) -> list[Any]:
    return [op for op in _ops(definition) if isinstance(op, kind)]


def _copies(definition: Definition) -> list[Copy]:
    return [a for op in _of(definition, File) for a in op.actions if isinstance(a, Copy)]


@pytest.mark.parametrize("case", CASES)
def test_shared_dockerfiles_convert(case: str) -> None:
    options_path = DOCKERFILES / case / "build.json"
    options = json.loads(options_path.read_text()) if options_path.is_file() else {}
    result = _convert(
        (DOCKERFILES / case / "Dockerfile").read_text(),
        build_args=options.get("build_args", {}),
        target=options.get("target"),
    )
    data = result.definition.to_bytes()
    assert Definition.from_bytes(data).to_bytes() == data
    assert result.config.to_oci_config()["config"]


def test_digest_is_stable_across_conversions() -> None:
    text = (DOCKERFILES / "multistage-by-name" / "Dockerfile").read_text()
    first, second = _convert(text), _convert(text)
    assert first.definition.to_bytes() == second.definition.to_bytes()
    assert first.definition.root_digest == second.definition.root_digest


def test_run_env_cwd_user_and_shell() -> None:
    result = _convert(
        "FROM debian\nARG V=1\nENV A=b\nWORKDIR /app\nUSER nobody\nRUN echo $A\n"
        'SHELL ["/bin/bash", "-eu", "-c"]\nRUN ["ls", "-l"]\nRUN true\n'
    )
    runs = _of(result.definition, Exec)
    assert [r.args for r in runs] == [
        ("/bin/sh", "-c", "echo $A"),
        ("ls", "-l"),
        ("/bin/bash", "-eu", "-c", "true"),
    ]
    first = runs[0]
    assert first.env == (f"PATH={DEFAULT_PATH}", "A=b", "V=1")
    assert first.cwd == "/app"
    assert first.user == "nobody"
    mkdir = _of(result.definition, File)[0].actions[0]
    assert mkdir == Mkdir(path="/app", mode=0o755, make_parents=True)
    history = result.config.history
    assert history[0].created_by == "# debian.sh"
    assert history[-1].created_by == "RUN |1 V=1 /bin/bash -eu -c true # buildkit"
    assert [h.empty_layer for h in history[1:]] == [
        True,
        True,
        False,
        True,
        False,
        True,
        False,
        False,
    ]


def test_proxy_args_are_proxy_env_only() -> None:
    result = _convert(
        "FROM debian\nRUN true\n", build_args={"HTTP_PROXY": "http://p:3128", "X": "1"}
    )
    (run,) = _of(result.definition, Exec)
    assert run.proxy_env == ("HTTP_PROXY=http://p:3128", "http_proxy=http://p:3128")
    assert not any(item.startswith("HTTP_PROXY") for item in run.env)
    assert "HTTP_PROXY" not in json.dumps(result.config.to_oci_config())


def test_run_mounts() -> None:
    result = _convert(
        "FROM debian AS tools\nFROM debian\nWORKDIR /src\n"
        "RUN --mount=type=bind,source=a,target=ctx "
        "--mount=type=bind,from=tools,source=/usr,target=/t,rw "
        "--mount=type=cache,target=/root/.cache,sharing=locked,uid=1 "
        "--mount=type=tmpfs,target=/tmp,size=1m "
        "--mount=type=secret,id=tok,required=true "
        "--mount=type=ssh --network=none true\n"
    )
    (run,) = _of(result.definition, Exec)
    assert run.network == "none"
    root, ctx, tools, cache, tmpfs, secret, ssh = run.mounts
    assert root.dest == "/" and root.output == 0
    assert (ctx.dest, ctx.source_path, ctx.readonly, ctx.kind) == ("/src/ctx", "/a", True, "bind")
    assert ctx.input is not None and ctx.output is None
    assert (tools.dest, tools.readonly, tools.output) == ("/t", False, None)  # ForceNoOutput
    assert (cache.kind, cache.cache_id, cache.sharing, cache.uid) == (
        "cache",
        "/root/.cache",
        "locked",
        1,
    )
    assert (tmpfs.kind, tmpfs.size) == ("tmpfs", 1024 * 1024)
    assert (secret.kind, secret.dest, secret.secret_id, secret.required, secret.mode) == (
        "secret",
        "/run/secrets/tok",
        "tok",
        True,
        0o400,
    )
    assert (ssh.kind, ssh.secret_id, ssh.mode) == ("ssh", "default", 0o600)
    assert f"SSH_AUTH_SOCK={ssh.dest}" in run.env
    inputs = _ops(result.definition)
    assert isinstance(inputs[0], ImageSource)


def test_ssh_mounts_are_numbered_among_ssh_mounts_and_the_first_is_the_agent() -> None:
    # BuildKit's llb: /run/buildkit/ssh_agent.N counts the step's ssh mounts only, and
    # SSH_AUTH_SOCK names the first one unless the stage set it.
    result = _convert(
        "FROM debian\n"
        "RUN --mount=type=tmpfs,target=/t --mount=type=ssh,id=git,uid=7,gid=8,mode=0660 "
        "--mount=type=ssh,target=/agent --mount=type=ssh,required=true true\n"
    )
    (run,) = _of(result.definition, Exec)
    _, _, git, named, third = run.mounts
    assert (git.dest, git.secret_id, git.uid, git.gid, git.mode, git.required) == (
        "/run/buildkit/ssh_agent.0",
        "git",
        7,
        8,
        0o660,
        False,
    )
    assert (named.dest, named.secret_id) == ("/agent", "default")
    assert (third.dest, third.required) == ("/run/buildkit/ssh_agent.2", True)
    assert "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0" in run.env
    preset = _convert("FROM debian\nENV SSH_AUTH_SOCK=/mine\nRUN --mount=type=ssh true\n")
    (run,) = _of(preset.definition, Exec)
    assert [e for e in run.env if e.startswith("SSH_AUTH_SOCK=")] == ["SSH_AUTH_SOCK=/mine"]


def test_copy_destination_rules() -> None:
    result = _convert(
        "FROM debian\nWORKDIR /app\nCOPY a b/\nCOPY a b\nCOPY a .\nCOPY x y /abs/\n"
        "COPY --chown=app:staff --chmod=640 a /o\n"
    )
    copies = _copies(result.definition)
    assert [(c.src, c.dest) for c in copies] == [
        ("/a", "/app/b/"),
        ("/a", "/app/b"),
        ("/a", "/app/"),
        ("/x", "/abs/"),
        ("/y", "/abs/"),
        ("/a", "/o"),
    ]
    assert all(c.allow_wildcard and c.create_dest_path and c.dir_copy_contents for c in copies)
    assert copies[-1].chown is not None and copies[-1].chown.group == "staff"
    assert copies[-1].chmod == "640"
    (local,) = _of(result.definition, LocalSource)
    assert local.name == "context"
    assert result.config.history[-1].created_by == "COPY a /o # buildkit"


def test_copy_several_sources_need_a_directory() -> None:
    with pytest.raises(ParseError) as caught:
        _convert("FROM debian\nRUN true\nCOPY a b /dest\n")
    assert caught.value.line == 3
    assert "Dockerfile:3:" in str(caught.value)
    assert "must be a directory" in str(caught.value)


def test_copy_link_merges() -> None:
    result = _convert("FROM debian\nCOPY --link a /a\n")
    ops = _ops(result.definition)
    assert isinstance(ops[-1], Merge)
    assert len(ops[-1].inputs) == 2
    (file_op,) = _of(result.definition, File)
    assert file_op.base_input is None


def test_copy_from_stage_and_image() -> None:
    result = _convert(
        "FROM debian AS build\nWORKDIR /w\nRUN make\n"
        "FROM scratch\nCOPY --from=build /w/out /bin/out\nCOPY --from=alpine:3 /etc/os-release /\n"
    )
    assert len(_of(result.definition, Exec)) == 1
    files = _of(result.definition, File)
    last = files[-1]
    assert [type(a) for a in last.actions] == [Copy]
    images = [op.ref for op in _of(result.definition, ImageSource)]
    assert images == ["debian", "alpine:3"]
    assert set(result.stage_states) == {0, 1}
    assert result.config.env == (f"PATH={DEFAULT_PATH}",)


def test_add_url_and_archive() -> None:
    result = _convert(
        "FROM debian\nADD --checksum=sha256:" + "0" * 64 + " https://example.com/f/x.txt /d/\n"
        "ADD a.tar.gz /x/\n"
    )
    (http,) = _of(result.definition, HttpSource)
    assert http.url == "https://example.com/f/x.txt"
    assert http.checksum == "sha256:" + "0" * 64
    copies = _copies(result.definition)
    assert (copies[0].src, copies[0].dest) == ("/x.txt", "/d/x.txt")
    assert copies[1].attempt_unpack_docker_compatibility


def test_copy_heredoc_mkfile() -> None:
    result = _convert("FROM debian\nCOPY <<EOF /etc/greeting\nhello\nEOF\n")
    mkfiles = [
        a for op in _of(result.definition, File) for a in op.actions if isinstance(a, Mkfile)
    ]
    assert mkfiles == [Mkfile(path="/EOF", data=b"hello\n", mode=0o644)]
    assert _copies(result.definition)[0].dest == "/etc/greeting"


def test_config_fields() -> None:
    result = _convert(
        'FROM debian\nCMD ["keep"]\nENTRYPOINT ["/e"]\nLABEL a=1 b=2\nLABEL a=3\n'
        "EXPOSE 80 53/udp 8000-8001\nVOLUME /data\nSTOPSIGNAL SIGINT\n"
        "HEALTHCHECK --interval=5s --retries=2 CMD curl -f localhost\nUSER app\n"
    )
    config = result.config.to_oci_config()["config"]
    assert config["Entrypoint"] == ["/e"]
    assert config["Cmd"] == ["keep"]
    assert config["Labels"] == {"a": "3", "b": "2"}
    assert list(config["ExposedPorts"]) == ["80/tcp", "53/udp", "8000/tcp", "8001/tcp"]
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGINT"
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f localhost"],
        "Interval": 5_000_000_000,
        "Retries": 2,
    }
    assert config["User"] == "app"
    assert config["Env"] == [f"PATH={DEFAULT_PATH}"]


def test_entrypoint_resets_inherited_cmd() -> None:
    result = _convert("FROM debian\nENTRYPOINT echo hi\n")
    assert result.config.cmd is None
    assert result.config.entrypoint == ("/bin/sh", "-c", "echo hi")
    after = _convert('FROM debian\nENTRYPOINT ["/e"]\nCMD ["x"]\n')
    assert after.config.cmd == ("x",)


def test_stage_inherits_config_from_stage() -> None:
    result = _convert("FROM debian AS a\nENV X=1\nWORKDIR /w\nFROM a\nRUN pwd\n")
    (run,) = [op for op in _of(result.definition, Exec)]
    assert run.cwd == "/w"
    assert "X=1" in run.env
    assert result.config.workdir == "/w"


def test_base_config_as_state_and_onbuild() -> None:
    base = ImageConfigState(env=("A=1",), workdir="/srv", user="u")
    result = _convert("FROM img\nRUN true\nONBUILD RUN x\n", base_config=lambda r, p: base)
    (run,) = _of(result.definition, Exec)
    assert (run.env, run.cwd, run.user) == (("A=1",), "/srv", "u")
    assert result.config.onbuild == ("RUN x",)
    round_trip = ImageConfigState.from_oci_config(result.config.to_oci_config())
    assert round_trip == result.config


def test_descriptions_and_locations() -> None:
    result = _convert("FROM debian AS b\n\nRUN echo \\\n  hi\n")
    metadata = list(result.definition.metadata.values())
    run_meta = next(m for m in metadata if "RUN" in m.description)
    assert run_meta.description == "[2/2] RUN echo hi"  # the only stage goes unnamed
    assert run_meta.source_locations[0].start_line == 3
    assert run_meta.source_locations[0].end_line == 4


def _descriptions(result: GraphResult) -> list[str]:
    return [m.description for m in result.definition.metadata.values() if m.description]


def test_step_numbers_count_only_vertices_as_buildkit() -> None:
    # BuildKit's testStepNames: FROM scratch and FROM <stage> are no steps; ENV, ARG and
    # the other config-only instructions take no number; WORKDIR / makes no vertex but
    # is counted in the total.
    result = _convert(
        "FROM debian AS base\nWORKDIR /out\nENV A=1\nRUN echo base > base\n"
        "FROM base AS mid\nWORKDIR /\nRUN true\n"
        "FROM scratch\nCOPY --from=mid --chmod=0644 /out /out\n"
    )
    assert sorted(_descriptions(result)) == [
        "[base 1/3] FROM debian",
        "[base 2/3] WORKDIR /out",
        "[base 3/3] RUN echo base > base",
        "[mid 1/2] RUN true",
        "[stage-2 1/1] COPY --from=mid --chmod=0644 /out /out",
    ]


def test_step_names_upper_case_the_keyword_and_summarize_a_heredoc() -> None:
    result = _convert(
        "from debian\nrun <<EOF\n  echo one\necho two\nEOF\n"
        "RUN <<EOF\nonly\nEOF\nRUN cat <<EOF\nx\nEOF\ncopy a b\n"
    )
    assert sorted(_descriptions(result)) == [
        "[1/5] FROM debian",
        "[2/5] RUN <<EOF (echo one...)",
        "[3/5] RUN <<EOF (only)",
        "[4/5] RUN cat <<EOF",
        "[5/5] COPY a b",
    ]


def test_a_stage_is_named_when_an_image_it_copies_from_is_a_stage_too() -> None:
    names = _descriptions(_convert("FROM debian\nCOPY --from=tools:1 /t /t\n"))
    assert "[stage-0 2/2] COPY --from=tools:1 /t /t" in names
    names = _descriptions(_convert("FROM debian\nRUN --mount=from=tools:1,target=/t true\n"))
    assert "[stage-0 2/2] RUN --mount=from=tools:1,target=/t true" in names


def test_fired_triggers_are_named_and_counted_as_buildkit() -> None:
    # Every trigger counts in the total (an ENV one too); a fired trigger's step says
    # ONBUILD; only instructions that make a vertex take a number.
    result = _convert(
        "FROM debian AS base\nONBUILD ENV A=1\nONBUILD RUN echo $A\nFROM base\nRUN echo child\n"
    )
    assert sorted(_descriptions(result)) == [
        "[base 1/1] FROM debian",
        "[stage-1 1/3] ONBUILD RUN echo $A",
        "[stage-1 2/3] RUN echo child",
    ]


def test_history_text_as_buildkit_writes_it() -> None:
    # testExportedHistory and testExportedHistoryFlattenArgs.
    result = _convert(
        "FROM debian\nARG foo=bar\nARG bar=123\nARG foo=bar2\nARG unset\n"
        "EXPOSE 2375 5000 1234/udp 5000\nWORKDIR /\nRUN ls\n"
    )
    entries = [(h.created_by, h.empty_layer) for h in result.config.history[1:]]
    assert entries == [
        ("ARG foo=bar", True),
        ("ARG bar=123", True),
        ("ARG foo=bar2", True),
        ("ARG unset", True),
        ("EXPOSE [1234/udp 2375/tcp 5000/tcp]", True),
        ("WORKDIR /", True),
        ("RUN |3 foo=bar2 bar=123 unset= /bin/sh -c ls # buildkit", False),
    ]
    # WORKDIR / makes no file op: the RUN's only input is the image.
    assert _of(result.definition, File) == []


def test_run_history_lists_every_declared_arg_as_buildkit() -> None:
    # An ENV of the same name gives the value; the prefix is the stage's own ARGs.
    result = _convert("FROM debian\nARG A=1 B\nENV A=2\nRUN x\nFROM debian\nRUN y\n")
    assert [h.created_by for h in result.config.history[1:]] == ["RUN /bin/sh -c y # buildkit"]
    first = _convert("FROM debian\nARG A=1 B\nENV A=2\nRUN x\n")
    assert first.config.history[-1].created_by == "RUN |2 A=2 B= /bin/sh -c x # buildkit"


def test_build_arg_value_is_the_arg_history_value() -> None:
    result = _convert("FROM debian\nARG foo=bar\n", build_args={"foo": "given"})
    assert result.config.history[-1].created_by == "ARG foo=given"


def test_add_of_a_url_without_a_file_name_is_unnamed() -> None:
    # testDockerfileADDFromURL: a URL whose path is "/" names the file __unnamed__.
    for url in ("http://example.test/", "http://example.test"):
        result = _convert(f"FROM scratch\nADD {url} /dest/\n")
        (http,) = _of(result.definition, HttpSource)
        assert http.filename == "__unnamed__"
        (action,) = _copies(result.definition)
        assert (action.src, action.dest) == ("/__unnamed__", "/dest/__unnamed__")


def test_sandbox_hostname_build_arg_sets_every_run_steps_host_name() -> None:
    text = "FROM debian AS a\nRUN a\nFROM debian\nCOPY --from=a /x /x\nRUN b\n"
    result = _convert(text, build_args={"BUILDKIT_SANDBOX_HOSTNAME": "foo"})
    assert [run.hostname for run in _of(result.definition, Exec)] == ["foo", "foo"]
    assert [run.hostname for run in _of(_convert(text).definition, Exec)] == ["", ""]


def test_writable_bind_mount_has_no_output() -> None:
    # BuildKit's ForceNoOutput for rw binds: their writes are discarded, so the step can
    # be keyed on the mounted directory's content (testMountRWCache).
    result = _convert(
        "FROM debian AS build\nRUN mkdir out\nFROM debian\n"
        "RUN --mount=from=build,src=out,target=/out,rw touch /out/bar\n"
        "RUN --mount=from=build,src=out,target=/ro true\n"
    )
    rw_run, ro_run = [op for op in _of(result.definition, Exec) if len(op.mounts) > 1]
    assert [(m.dest, m.readonly, m.output) for m in rw_run.mounts] == [
        ("/", False, 0),
        ("/out", False, None),
    ]
    assert [(m.dest, m.readonly, m.output) for m in ro_run.mounts][1] == ("/ro", True, None)


def test_entrypoint_in_child_stage_drops_parent_cmd() -> None:
    result = _convert((DOCKERFILES / "entrypoint-cmd" / "Dockerfile").read_text())
    assert result.config.entrypoint == ("/bin/echo",)
    assert result.config.cmd is None
    shell_form = _convert(
        (DOCKERFILES / "entrypoint-cmd" / "Dockerfile").read_text(), target="shell-form"
    )
    assert shell_form.config.entrypoint == ("/bin/sh", "-c", "echo shell entry")
    assert shell_form.config.cmd == ("/bin/sh", "-c", "echo shell cmd")


def test_insecure_run_is_refused_with_its_line() -> None:
    with pytest.raises(ParseError) as caught:
        _convert("FROM debian\n\nRUN --security=insecure true\n")
    assert caught.value.line == 3


def test_workdir_mkdir_is_owned_by_user_and_relative() -> None:
    result = _convert("FROM scratch\nUSER app:grp\nWORKDIR a\nWORKDIR b\n")
    mkdirs = [a for op in _of(result.definition, File) for a in op.actions]
    assert [m.path for m in mkdirs] == ["/a", "/a/b"]
    assert all(m.make_parents and m.chown is not None and m.chown.user == "app" for m in mkdirs)
    assert result.config.workdir == "/a/b"
    assert _of(result.definition, File)[0].base_input is None


def test_base_image_onbuild_triggers_run_first_and_are_not_inherited() -> None:
    triggers = ("RUN echo triggered", "ENV FROM_TRIGGER=yes")
    base = ImageConfigState(onbuild=triggers)
    plan = plan_build(
        "FROM img\nRUN echo mine\nONBUILD RUN echo for-my-children\n",
        target_platform=PLATFORM,
        build_platform=PLATFORM,
        image_triggers=lambda ref, platform: triggers if ref == "img" else (),
    )
    result = plan_to_graph(plan, base_config=lambda r, p: base, target_platform="linux/amd64")
    first, second = _of(result.definition, Exec)
    assert first.args[-1] == "echo triggered"
    assert second.args[-1] == "echo mine"
    assert "FROM_TRIGGER=yes" in second.env
    assert result.config.onbuild == ("RUN echo for-my-children",)


def test_broken_onbuild_trigger_points_at_the_from_line() -> None:
    with pytest.raises(ParseError) as caught:
        plan_build(
            "ARG X\nFROM img\n",
            target_platform=PLATFORM,
            build_platform=PLATFORM,
            image_triggers=lambda ref, platform: ["FROBNICATE now"],
        )
    assert caught.value.line == 2
    assert "ONBUILD trigger" in str(caught.value)


def test_copy_from_image_uses_stage_platform() -> None:
    result = _convert("FROM --platform=linux/arm64 scratch\nCOPY --from=busybox /bin/sh /sh\n")
    (image,) = _of(result.definition, ImageSource)
    assert (image.ref, image.platform) == ("busybox", "linux/arm64")


def test_secret_as_env_stays_out_of_env_and_mounts() -> None:
    result = _convert(
        "FROM debian\n"
        'RUN --mount=type=secret,id=token,env=TOKEN,required=true test -n "$TOKEN"\n'
        "RUN --mount=type=secret,id=key,env=KEY,target=/key.pem cat /key.pem\n"
    )
    first, second = _of(result.definition, Exec)
    assert first.secret_env == (SecretEnv(name="TOKEN", secret_id="token", required=True),)
    assert [m.kind for m in first.mounts] == ["bind"]  # env= alone: no secret file
    assert not any("TOKEN" in item for item in first.env)
    assert second.secret_env == (SecretEnv(name="KEY", secret_id="key"),)
    assert [(m.kind, m.dest) for m in second.mounts][1:] == [("secret", "/key.pem")]


def test_scratch_image_has_root_workdir() -> None:
    # BuildKit's empty image config has WorkingDir "/" (docker inspect shows it).
    config = _convert('FROM scratch\nCOPY a /\nCMD ["/a"]\n').config.to_oci_config()["config"]
    assert config["WorkingDir"] == "/"
    assert _convert("FROM scratch\nWORKDIR /w\n").config.workdir == "/w"


def test_add_unpack_flag() -> None:
    # Dockerfile 1.17: --unpack=true unpacks a remote archive into the destination;
    # --unpack=false copies a local archive as the file it is.
    result = _convert(
        "FROM debian\nADD --unpack=true https://example.com/a/src.tar.gz /opt/src/\n"
        "ADD --unpack=false local.tar.gz /keep/\nADD --unpack local2.tar /x/\n"
        "ADD https://example.com/b.tar.gz /plain/\n"
    )
    remote, keep, local2, plain = _copies(result.definition)
    assert (remote.src, remote.dest, remote.attempt_unpack_docker_compatibility) == (
        "/src.tar.gz",
        "/opt/src/",
        True,
    )
    assert (keep.src, keep.attempt_unpack_docker_compatibility) == ("/local.tar.gz", False)
    assert local2.attempt_unpack_docker_compatibility
    assert (plain.dest, plain.attempt_unpack_docker_compatibility) == ("/plain/b.tar.gz", False)


@pytest.mark.parametrize(
    ("checksum", "problem"),
    [
        ("md5:" + "0" * 32, "unsupported digest algorithm"),
        ("sha256:" + "0" * 63, "invalid checksum digest length"),
        ("sha256:" + "g" * 64, "invalid checksum digest format"),
        ("sha256:" + "A" * 64, "invalid checksum digest format"),
        ("0" * 64, "invalid checksum digest format"),
    ],
)
def test_add_checksum_format_is_checked_before_any_fetch(checksum: str, problem: str) -> None:
    # BuildKit parses --checksum (go-digest) while converting: nothing is downloaded.
    text = f"FROM debian\n\nADD --checksum={checksum} https://example.com/x /x\n"
    with pytest.raises(ParseError, match=rf"^Dockerfile:3: ADD --checksum=\S+: {problem}$"):
        _convert(text)


def test_add_checksum_sha512_is_accepted() -> None:
    result = _convert(f"FROM debian\nADD --checksum=sha512:{'a' * 128} https://example.com/x /x\n")
    (http,) = _of(result.definition, HttpSource)
    assert http.checksum == "sha512:" + "a" * 128


def test_copy_parents_wildcards_before_the_pivot() -> None:
    # BuildKit's testCopyRelativeParents: the part before /./ is the (wildcard) source,
    # the rest an include pattern; without wildcards the path must exist.
    result = _convert(
        "FROM debian AS base\nFROM debian\n"
        "COPY --from=base --parents /test/a/b*/./c/**/e /test/a/b/./c/d /out/\n"
        "COPY --parents ./test/a/b/c/d /test/x/. /out2/\n"
    )
    wildcard, pivot, start, end = _copies(result.definition)
    assert (wildcard.src, wildcard.include_patterns, wildcard.required_paths) == (
        "/test/a/b*",
        ("c/**/e",),
        (),
    )
    assert wildcard.allow_wildcard and wildcard.allow_empty_wildcard
    assert (pivot.src, pivot.include_patterns, pivot.required_paths) == (
        "/test/a/b",
        ("c/d",),
        ("/test/a/b/c/d",),
    )
    assert (start.src, start.include_patterns) == ("/", ("test/a/b/c/d",))
    assert (end.src, end.include_patterns, end.required_paths) == (
        "/",
        ("test/x",),
        ("/test/x",),
    )


def test_onbuild_triggers_of_a_stage_fire_in_stages_built_on_it() -> None:
    # BuildKit (Dockerfile >= 1.12): FROM <stage> runs that stage's ONBUILD triggers first;
    # they are not passed on to the stages built on the child.
    result = _convert(
        "FROM debian AS base\nONBUILD COPY app.txt /app/\nONBUILD RUN echo triggered\n"
        "FROM base AS mid\nRUN echo mine\nFROM mid\nRUN echo last\n"
    )
    runs = [op.args[-1] for op in _of(result.definition, Exec)]
    assert runs == ["echo triggered", "echo mine", "echo last"]
    (copy_action,) = _copies(result.definition)
    assert (copy_action.src, copy_action.dest) == ("/app.txt", "/app/")
    assert result.config.onbuild == ()
    mid = _convert(
        "FROM debian AS base\nONBUILD RUN echo triggered\nFROM base AS mid\n", target="base"
    )
    assert mid.config.onbuild == ("RUN echo triggered",)
