"""The State builder: what ops it writes, and how marshal orders and deduplicates them."""

from __future__ import annotations

import pytest

from lazybuild.graph import (
    Copy,
    Definition,
    Diff,
    Exec,
    File,
    HttpSource,
    ImageSource,
    Input,
    LocalSource,
    Merge,
    Mkdir,
    Operation,
    OpMetadata,
    RunMount,
    SourceLocation,
    State,
    copy,
    decode_op,
    diff,
    digest_of,
    marshal,
    merge,
)

ALPINE = "docker.io/library/alpine@sha256:" + "a" * 64


def base() -> State:
    return State.image(ALPINE, "linux/amd64")


def ops_of(definition: Definition) -> list[Operation]:
    return [decode_op(op) for op in definition.ops]


def root_op(state: State) -> Operation:
    return ops_of(marshal(state))[-1]


def test_run_takes_env_dir_user_network_and_hostname_from_the_state() -> None:
    state = (
        base()
        .with_env("PATH", "/bin")
        .with_env("A", "1")
        .with_env("PATH", "/usr/bin")
        .with_dir("/src")
        .with_dir("sub/../app")
        .with_user("builder")
        .with_network("none")
        .with_hostname("box")
    )
    op = root_op(state.run(["make"]))
    assert isinstance(op, Exec)
    assert op.args == ("make",)
    assert op.env == ("A=1", "PATH=/usr/bin")  # replacing moves to the end
    assert (op.cwd, op.user, op.network, op.hostname) == ("/src/app", "builder", "none", "box")
    assert state.get_env("PATH") == "/usr/bin" and state.without_env("A").env == ("PATH=/usr/bin",)


def test_settings_change_later_ops_only() -> None:
    plain = base()
    assert marshal(plain.with_env("A", "1").with_dir("/x")) == marshal(plain)


def test_run_network_and_proxy_env_are_set_per_run() -> None:
    op = root_op(base().run(["curl"], network="host", proxy_env=["HTTPS_PROXY=http://p:3128"]))
    assert isinstance(op, Exec) and op.network == "host"
    assert op.proxy_env == ("HTTPS_PROXY=http://p:3128",) and op.env == ()


def test_http_source() -> None:
    state = State.http("https://example.com/a.tgz", checksum="sha256:" + "d" * 64, mode=0o600)
    assert root_op(state) == HttpSource(
        url="https://example.com/a.tgz", checksum="sha256:" + "d" * 64, mode=0o600
    )


def test_run_mounts_become_inputs_and_writable_binds_become_outputs() -> None:
    context = State.local("context")
    ran = base().run(
        ["build"],
        mounts=[
            RunMount(dest="/src", source=context, readonly=True),
            RunMount(dest="/cache", kind="cache", cache_id="npm", sharing="locked"),
            RunMount(dest="/out"),
            RunMount(dest="/run/secrets/token", kind="secret", secret_id="token", mode=0o400),
            RunMount(dest="/tmp", kind="tmpfs", size=1 << 20),
            RunMount(dest="/ctx-rw", source=context),
        ],
    )
    op = root_op(ran)
    assert isinstance(op, Exec)
    assert [(m.dest, m.input, m.output) for m in op.mounts] == [
        ("/", 0, 0),
        ("/src", 1, None),
        ("/cache", None, None),
        ("/out", None, 1),
        ("/run/secrets/token", None, None),
        ("/tmp", None, None),
        ("/ctx-rw", 1, 2),  # the same state is one input
    ]
    assert len(op.inputs) == 2
    out = marshal(ran.get_mount("/out"))
    assert out.root_output == 1 and out.ops == marshal(ran).ops
    assert marshal(ran.get_mount("/ctx-rw")).root_output == 2
    assert marshal(ran.root()) == marshal(ran)
    with pytest.raises(KeyError):
        ran.get_mount("/src")


def test_runs_chain_on_the_root_filesystem() -> None:
    definition = marshal(base().run(["one"]).run(["two"]))
    first, _, third = ops_of(definition)
    assert isinstance(first, ImageSource)
    assert isinstance(third, Exec) and third.args == ("two",)
    assert third.inputs == (Input(digest_of(definition.ops[1]), 0),)


def test_a_run_on_scratch_has_no_root_input() -> None:
    op = root_op(State.scratch().run(["/bin/true"]))
    assert isinstance(op, Exec) and op.inputs == () and op.mounts[0].input is None


def test_file_resolves_relative_paths_against_the_working_directories() -> None:
    context = State.local("context").with_dir("/ctx")
    state = (
        base()
        .with_dir("/app")
        .file(
            copy(context, "src/*.c", "./", allow_wildcard=True),
            copy(context, "/abs", "/abs/"),
            Mkdir(path="bin", make_parents=True),
        )
    )
    op = root_op(state)
    assert isinstance(op, File)
    first, second, third = op.actions
    assert isinstance(first, Copy) and (first.src, first.dest) == ("/ctx/src/*.c", "/app/./")
    assert first.src_input == 1 and first.allow_wildcard
    assert isinstance(second, Copy) and (second.src, second.dest, second.src_input) == (
        "/abs",
        "/abs/",
        1,
    )
    assert isinstance(third, Mkdir) and third.path == "/app/bin"
    assert op.base_input == 0 and len(op.inputs) == 2


def test_file_on_scratch_has_no_base() -> None:
    op = root_op(State.scratch().file(copy(State.local("context"), "/a", "/a")))
    assert isinstance(op, File) and op.base_input is None and op.actions[0].src_input == 0  # type: ignore[union-attr]


def test_copy_from_scratch_is_refused() -> None:
    with pytest.raises(ValueError, match="scratch"):
        base().file(copy(State.scratch(), "/a", "/b"))


def test_merge_and_diff() -> None:
    upper = base().run(["change"])
    merged = merge([base(), State.scratch(), upper.root()])
    op = root_op(merged)
    assert isinstance(op, Merge) and len(op.inputs) == 2
    assert merge([]).is_scratch and merge([State.scratch()]).is_scratch
    assert marshal(merge([State.scratch(), upper])) == marshal(upper)
    changes = root_op(diff(base(), upper))
    assert isinstance(changes, Diff) and (changes.lower, changes.upper) == (0, 1)
    from_scratch = root_op(diff(State.scratch(), upper))
    assert isinstance(from_scratch, Diff) and (from_scratch.lower, from_scratch.upper) == (None, 0)
    assert diff(State.scratch(), State.scratch()).is_scratch


def test_marshal_writes_inputs_first_root_last_and_each_op_once() -> None:
    shared = base().run(["shared"])
    left = shared.run(["left"])
    right = shared.run(["right"])
    same_as_left = base().run(["shared"]).run(["left"])  # built twice, one op
    definition = marshal(merge([left, right, same_as_left]))
    ops = ops_of(definition)
    assert len(ops) == 5
    seen: set[str] = set()
    for data, op in zip(definition.ops, ops, strict=True):
        assert all(edge.digest in seen for edge in op.inputs)
        seen.add(digest_of(data))
    assert isinstance(ops[-1], Merge)


def test_metadata_is_kept_beside_the_digest_not_in_it() -> None:
    described = OpMetadata(
        description="[2/3] RUN make",
        progress_group="stage-0",
        source_locations=(SourceLocation("Dockerfile", 4, 5),),
    )
    plain = marshal(base().run(["make"]))
    with_metadata = marshal(base().run(["make"], metadata=described))
    assert plain.ops == with_metadata.ops
    assert with_metadata.metadata == {with_metadata.root_digest: described}
    assert plain.metadata == {}


def test_deduplicated_ops_keep_the_first_description_and_any_ignore_cache() -> None:
    first = base().run(["x"], metadata=OpMetadata(description="first"))
    second = base().run(["x"], metadata=OpMetadata(description="second", ignore_cache=True))
    definition = marshal(merge([first.run(["a"]), second.run(["b"])]))
    (meta,) = [m for m in definition.metadata.values()]
    assert meta == OpMetadata(description="first", ignore_cache=True)


def test_local_source_options() -> None:
    op = root_op(State.local("context", include_patterns=["src"], followpaths=["src/a"]))
    assert op == LocalSource(name="context", include_patterns=("src",), followpaths=("src/a",))


def test_scratch_marshals_to_an_empty_definition() -> None:
    assert marshal(State.scratch()) == Definition(ops=())
