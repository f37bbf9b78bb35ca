"""Definition: byte round trip and validation."""

from __future__ import annotations

import json

import pytest

from lazybuild.graph import (
    Copy,
    Definition,
    DefinitionError,
    Exec,
    ExecMount,
    File,
    ImageSource,
    Input,
    Merge,
    OpMetadata,
    RunMount,
    SourceLocation,
    State,
    copy,
    digest_of,
    encode_op,
    marshal,
)
from lazybuild.graph.definition import _check_acyclic

IMAGE = ImageSource(ref="example.com/base@sha256:" + "a" * 64, platform="linux/amd64")
IMAGE_BYTES = encode_op(IMAGE)
IMAGE_DIGEST = digest_of(IMAGE_BYTES)


def sample() -> Definition:
    context = State.local("context")
    built = (
        State.image(IMAGE.ref, IMAGE.platform)
        .file(copy(context, "/src", "/src"))
        .run(
            ["make"],
            mounts=[RunMount(dest="/out")],
            metadata=OpMetadata(
                description="RUN make",
                source_locations=(SourceLocation("Dockerfile", 3, 3),),
                ignore_cache=True,
            ),
        )
    )
    return marshal(built.get_mount("/out"))


def test_bytes_round_trip() -> None:
    definition = sample()
    data = definition.to_bytes()
    assert Definition.from_bytes(data) == definition
    assert Definition.from_bytes(data).to_bytes() == data


def test_the_byte_form_is_readable_json() -> None:
    document = json.loads(sample().to_bytes())
    assert document["version"] == 1 and document["root_output"] == 1
    assert json.loads(document["ops"][0]) == {
        "image": {"platform": "linux/amd64", "ref": IMAGE.ref}
    }
    (meta,) = document["metadata"].values()
    assert meta["description"] == "RUN make"


def test_the_empty_definition_round_trips() -> None:
    empty = Definition(ops=())
    assert Definition.from_bytes(empty.to_bytes()) == empty and empty.root_digest is None


def make_exec(*mounts: ExecMount, inputs: tuple[Input, ...] = (Input(IMAGE_DIGEST),)) -> bytes:
    return encode_op(Exec(args=("x",), mounts=mounts, inputs=inputs))


ROOT = ExecMount(input=0, dest="/", output=0)
NO_ARGS = encode_op(Exec(args=(), mounts=(ROOT,), inputs=(Input(IMAGE_DIGEST),)))
SPACED_MERGE = encode_op(Merge(inputs=(Input(IMAGE_DIGEST),))).replace(b"{", b"{ ", 1)


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ((make_exec(ROOT),), "missing op"),
        ((IMAGE_BYTES, make_exec(ROOT, inputs=(Input(IMAGE_DIGEST, 1),))), "has no output 1"),
        ((make_exec(ROOT), IMAGE_BYTES), "missing op|comes before"),
        ((IMAGE_BYTES, IMAGE_BYTES), "twice"),
        ((IMAGE_BYTES, encode_op(ImageSource(ref="other", platform="p"))), "not reachable"),
        ((IMAGE_BYTES, make_exec(ExecMount(input=0, dest="/work", output=0))), "mount 0"),
        ((IMAGE_BYTES, make_exec(ExecMount(input=3, dest="/", output=0))), "input 3"),
        (
            (IMAGE_BYTES, encode_op(Exec(args=(), mounts=(ROOT,), inputs=(Input(IMAGE_DIGEST),)))),
            "no args",
        ),
        ((IMAGE_BYTES, make_exec(ROOT, ExecMount(dest="/o", output=2))), "numbered"),
        ((IMAGE_BYTES, make_exec(ROOT, ExecMount(dest="/o", readonly=True, output=1))), "writable"),
        ((IMAGE_BYTES, make_exec(ROOT, ExecMount(dest="/", kind="tmpfs"))), "destination"),
        (
            (
                IMAGE_BYTES,
                encode_op(
                    File(
                        actions=(Copy(src_input=1, src="/a", dest="/b"),),
                        inputs=(Input(IMAGE_DIGEST),),
                    )
                ),
            ),
            "copy src_input",
        ),
        (
            (IMAGE_BYTES, encode_op(Merge(inputs=(Input(IMAGE_DIGEST),))).replace(b"{", b"{ ", 1)),
            "canonical",
        ),
    ],
)
def test_invalid_definitions_are_refused_with_the_reason(
    ops: tuple[bytes, ...], message: str
) -> None:
    definition = Definition(ops=ops)
    with pytest.raises(DefinitionError, match=message):
        definition.decode()
    with pytest.raises(DefinitionError, match=message):
        Definition.from_bytes(definition.to_bytes())


def test_metadata_must_name_an_op_of_the_definition() -> None:
    stray = Definition(ops=(IMAGE_BYTES,), metadata={"sha256:" + "f" * 64: OpMetadata()})
    with pytest.raises(DefinitionError, match="unknown op"):
        stray.decode()


def test_root_output_must_exist() -> None:
    with pytest.raises(DefinitionError, match="no output 1"):
        Definition(ops=(IMAGE_BYTES,), root_output=1).decode()
    with pytest.raises(DefinitionError, match="empty"):
        Definition(ops=(), root_output=1).decode()


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"[]",
        b'{"version":2,"ops":[]}',
        b'{"version":1,"ops":[1]}',
        b'{"version":1,"ops":[],"root_output":"0"}',
        b'{"version":1,"ops":[],"metadata":{"x":{"colour":"red"}}}',
    ],
)
def test_malformed_documents_are_refused(data: bytes) -> None:
    with pytest.raises(DefinitionError):
        Definition.from_bytes(data)


def test_cycles_are_found() -> None:
    # Content addressing makes a real cycle infeasible (an op would contain its own
    # digest), so the check is exercised on ops named by made-up digests.
    a = Merge(inputs=(Input("b"),))
    b = Merge(inputs=(Input("c"),))
    c = Merge(inputs=(Input("a"),))
    with pytest.raises(DefinitionError, match="cycle"):
        _check_acyclic({"a": a, "b": b, "c": c})
    _check_acyclic({"a": Merge(inputs=(Input("b"), Input("b"))), "b": Merge()})
