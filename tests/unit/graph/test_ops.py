"""Op encoding: golden bytes and digests, canonical form, strict decoding."""

from __future__ import annotations

import pytest

from lazybuild.graph import (
    ChownOpt,
    Copy,
    DecodeError,
    Diff,
    Exec,
    ExecMount,
    File,
    HttpSource,
    ImageSource,
    Input,
    LocalSource,
    Merge,
    Mkdir,
    Mkfile,
    Operation,
    Rm,
    decode_op,
    digest_of,
    encode_op,
    output_count,
)

ALPINE = "docker.io/library/alpine@sha256:" + "a" * 64
IMAGE = ImageSource(ref=ALPINE, platform="linux/amd64")
# Goldens computed outside Python: printf '%s' '<json>' | sha256sum.
IMAGE_JSON = (
    b'{"image":{"platform":"linux/amd64","ref":"docker.io/library/alpine@sha256:'
    + b"a" * 64
    + b'"}}'
)
IMAGE_DIGEST = "sha256:bd97402cb8458504f2f5790c90bb7852ae2e0e11d264a84f309707b3fcbac8ac"


ROOT = ExecMount(input=None, dest="/", output=0)


def make_exec() -> Exec:
    return Exec(
        args=("/bin/sh", "-c", "make"),
        env=("PATH=/usr/bin",),
        cwd="/src",
        network="none",
        mounts=(
            ExecMount(input=0, dest="/", output=0),
            ExecMount(dest="/root/.cache", kind="cache", cache_id="go", sharing="locked"),
        ),
        inputs=(Input(IMAGE_DIGEST),),
    )


def test_an_image_source_has_a_golden_encoding_and_digest() -> None:
    assert encode_op(IMAGE) == IMAGE_JSON
    assert digest_of(IMAGE_JSON) == IMAGE_DIGEST


def test_an_exec_has_a_golden_encoding_and_digest() -> None:
    data = encode_op(make_exec())
    assert data == (
        b'{"exec":{"args":["/bin/sh","-c","make"],"cwd":"/src","env":["PATH=/usr/bin"],'
        b'"inputs":[{"digest":"' + IMAGE_DIGEST.encode() + b'"}],'
        b'"mounts":[{"dest":"/","input":0,"output":0},'
        b'{"cache_id":"go","dest":"/root/.cache","kind":"cache","sharing":"locked"}],'
        b'"network":"none"}}'
    )
    assert digest_of(data) == (
        "sha256:8d3075a24f76d7da4cc75b3ba05457bbf425308bbf5804e42d64a714dc86b818"
    )


def test_a_mkfile_on_scratch_has_a_golden_encoding_and_digest() -> None:
    op = File(actions=(Mkfile(path="/etc/motd", data=b"hello\n", mode=0o600),), base_input=None)
    data = encode_op(op)
    assert data == (
        b'{"file":{"actions":[{"mkfile":{"data":"aGVsbG8K","mode":384,"path":"/etc/motd"}}],'
        b'"base_input":null}}'
    )
    assert digest_of(data) == (
        "sha256:4a72ef439eb1e5794fe18df3ee82e777a3bea55013c0ecf73bbe5956e2f200ec"
    )


EVERY_KIND: list[Operation] = [
    IMAGE,
    LocalSource(name="context", include_patterns=("src/**",), exclude_patterns=("*.o",)),
    HttpSource(url="https://example.com/a.tgz", checksum="sha256:" + "d" * 64, mode=0o600),
    Exec(args=("curl", "x"), proxy_env=("HTTP_PROXY=http://proxy:3128",), mounts=(ROOT,)),
    make_exec(),
    File(
        actions=(
            Copy(
                src_input=1,
                src="/src/*.c",
                dest="/app/",
                allow_wildcard=True,
                chown=ChownOpt("app", "staff"),
                chmod="0755",
                exclude_patterns=("test_*",),
                timestamp=0,
            ),
            Mkdir(path="/app/bin", make_parents=True, chown=ChownOpt("1000")),
            Mkfile(path="/app/bin/run", data=b"\x00\xff binary", mode=0o755),
            Rm(path="/app/*.tmp", allow_not_found=True, allow_wildcard=True),
        ),
        inputs=(Input(IMAGE_DIGEST), Input("sha256:" + "c" * 64, 1)),
    ),
    Merge(inputs=(Input(IMAGE_DIGEST), Input("sha256:" + "c" * 64))),
    Diff(inputs=(Input(IMAGE_DIGEST), Input("sha256:" + "c" * 64))),
    Diff(lower=None, upper=0, inputs=(Input(IMAGE_DIGEST),)),
]


@pytest.mark.parametrize("op", EVERY_KIND, ids=lambda op: type(op).__name__)
def test_every_op_round_trips(op: Operation) -> None:
    assert decode_op(encode_op(op)) == op


def test_fields_at_their_default_are_left_out() -> None:
    # So a new optional field does not change the digest of ops that do not use it.
    assert encode_op(File(actions=(Rm(path="/x"),))) == (
        b'{"file":{"actions":[{"rm":{"path":"/x"}}]}}'
    )
    assert encode_op(Merge()) == b'{"merge":{}}'


def test_an_explicit_default_is_not_canonical() -> None:
    with pytest.raises(DecodeError, match="canonical"):
        decode_op(b'{"merge":{"inputs":[]}}')


@pytest.mark.parametrize(
    "data",
    [
        b'{"image": {"platform":"p","ref":"r"}}',  # whitespace
        b'{"image":{"ref":"r","platform":"p"}}',  # key order
    ],
)
def test_other_spellings_of_the_same_op_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError, match="canonical"):
        decode_op(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"image":{"platform":"p","ref":"r","tag":"x"}}', "unknown field 'tag'"),
        (b'{"chroot":{}}', "unknown kind"),
        (b'{"image":{"platform":"p"}}', "ref"),
        (b'{"image":{"platform":"p","ref":1}}', "expected str"),
        (b'{"exec":{"args":["x"],"mounts":[{"dest":"/","readonly":1}]}}', "expected bool"),
        (b'{"exec":{"args":["x"],"mounts":[{"dest":"/","input":true}]}}', "expected int"),
        (b'{"exec":{"args":["x"],"mounts":[{"dest":"/"}],"network":"bridge"}}', "bridge"),
        (b'{"file":{"actions":[{"mkfile":{"data":"%%%","path":"/x"}}]}}', "base64"),
        (b'{"file":{"actions":[{"rm":{"path":"/x"},"mkdir":{"path":"/y"}}]}}', "exactly one"),
    ],
)
def test_malformed_ops_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_op(data)


def test_output_counts() -> None:
    assert output_count(IMAGE) == 1
    assert output_count(make_exec()) == 1
    two = Exec(
        args=("x",),
        mounts=(ExecMount(input=0, dest="/", output=0), ExecMount(dest="/out", output=1)),
    )
    assert output_count(two) == 2
