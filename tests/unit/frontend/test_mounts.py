"""``RUN --mount`` values: keys, aliases, defaults."""

from __future__ import annotations

import pytest

from lazybuild.frontend.dockerfile import ParseError, parse, parse_instruction
from lazybuild.frontend.dockerfile.mounts import MountSpecError, RunMount, parse_mount


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("target=/src", RunMount(type="bind", target="/src", readonly=True)),
        (
            "type=bind,src=a,dst=/b,from=stage,rw",
            RunMount(type="bind", target="/b", source="a", from_="stage", readonly=False),
        ),
        (
            "type=bind,source=a,destination=/b,readwrite=true",
            RunMount(type="bind", target="/b", source="a", readonly=False),
        ),
        (
            "type=cache,target=/c,id=go,sharing=locked,mode=0700,uid=1,gid=2,ro",
            RunMount(
                type="cache",
                target="/c",
                id="go",
                sharing="locked",
                mode=0o700,
                uid=1,
                gid=2,
                readonly=True,
            ),
        ),
        (
            "type=cache,target=/c,from=base,source=/sub",
            RunMount(
                type="cache", target="/c", id="/c", sharing="shared", from_="base", source="/sub"
            ),
        ),
        ("type=tmpfs,target=/t,size=64mb", RunMount(type="tmpfs", target="/t", size=64 << 20)),
        ("type=tmpfs,target=/t,size=1024", RunMount(type="tmpfs", target="/t", size=1024)),
        (
            "type=secret,id=tok",
            RunMount(type="secret", target="/run/secrets/tok", id="tok"),
        ),
        (
            "type=secret,target=/etc/app/key.pem,required",
            RunMount(type="secret", target="/etc/app/key.pem", id="key.pem", required=True),
        ),
        (
            "type=secret,id=tok,env=TOKEN",
            RunMount(type="secret", target=None, id="tok", env="TOKEN"),
        ),
        ("type=ssh", RunMount(type="ssh", target=None, id="default")),
        (
            "type=ssh,id=git,required=true,mode=0600",
            RunMount(type="ssh", target=None, id="git", required=True, mode=0o600),
        ),
        (
            '"type=bind","source=a,b",target=/x',
            RunMount(type="bind", target="/x", source="a,b", readonly=True),
        ),
    ],
)
def test_parse_mount(spec: str, expected: RunMount) -> None:
    assert parse_mount(spec) == expected


def test_values_expanded_before_interpretation() -> None:
    values = {"$T": "cache", "$D": "/d"}
    mount = parse_mount("type=$T,target=$D", lambda word: values.get(word, word))
    assert (mount.type, mount.target, mount.id) == ("cache", "/d", "/d")


@pytest.mark.parametrize(
    "spec",
    [
        "type=secret",
        "type=bind",
        "type=cache,target=/c,sharing=sometimes",
        "type=cache,target=/c,mode=999",
        "type=tmpfs,target=/t,size=big",
        "type=bind,target=/b,readonly=maybe",
        "type=ssh,from=x",
        "type=bind,target=/b,id",
    ],
)
def test_invalid(spec: str) -> None:
    with pytest.raises(MountSpecError):
        parse_mount(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # BuildKit's wording: the error, then " (did you mean X?)" for a name < 3 edits away.
        (
            "type=cache,taget=/c",
            "unexpected key 'taget' in 'type=cache,taget=/c' (did you mean target?)",
        ),
        ("type=cahce,target=/c", "unsupported mount type 'cahce' (did you mean cache?)"),
        (
            "type=cache,target=/c,sharing=lockd",
            "unsupported sharing value 'lockd' (did you mean locked?)",
        ),
        (
            "type=bind,target=/b,srcx=a",
            "unexpected key 'srcx' in 'type=bind,target=/b,srcx=a' (did you mean src?)",
        ),
        (
            "type=bind,target=/b,bogusness=a",
            "unexpected key 'bogusness' in 'type=bind,target=/b,bogusness=a'",
        ),
    ],
)
def test_mistyped_names_get_a_hint(spec: str, message: str) -> None:
    with pytest.raises(MountSpecError) as caught:
        parse_mount(spec)
    assert str(caught.value) == message


def test_mistyped_run_flag_gets_a_hint() -> None:
    with pytest.raises(
        ParseError, match=r"^Dockerfile:1: unknown flag: mout \(did you mean mount\?\)$"
    ):
        parse_instruction(parse("RUN --mout=type=cache,target=/c true\n").nodes[0])
