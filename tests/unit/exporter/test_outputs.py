"""Output flags read the way `docker buildx build` reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.errors import UsageError
from lazybuild.exporter.outputs import (
    DockerOutput,
    ImageOutput,
    LocalOutput,
    OciOutput,
    TarOutput,
    outputs_from_flags,
    parse_output,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("out", LocalOutput(Path("out"))),
        ("./dir/sub", LocalOutput(Path("./dir/sub"))),
        ("type=local,dest=out", LocalOutput(Path("out"))),
        ("type=registry,name=r.io/a:1", ImageOutput(("r.io/a:1",), push=True)),
        ("type=registry,name=r.io/a:1,push=false", ImageOutput(("r.io/a:1",), push=False)),
        ("type=image,name=r.io/a:1,push=true", ImageOutput(("r.io/a:1",), push=True)),
        (
            'type=image,"name=r.io/a:1,r.io/b:2",push=1',
            ImageOutput(("r.io/a:1", "r.io/b:2"), push=True),
        ),
        ("type=oci,dest=out.tar", OciOutput("out.tar")),
        ("type=oci", OciOutput("-")),
        ("type=oci,dest=layout,tar=false", OciOutput("layout", tar=False)),
        ("type=oci,dest=o.tar,name=x:1", OciOutput("o.tar", names=("x:1",))),
        ("type=docker,dest=img.tar,name=x", DockerOutput("img.tar", ("x",))),
        ("type=docker", DockerOutput(None)),
        ("TYPE=docker,compression=estargz,oci-mediatypes=true", DockerOutput(None)),
        # buildx: -o - is type=tar,dest=-, and so is type=local,dest=-.
        ("-", TarOutput("-")),
        ("type=tar,dest=root.tar", TarOutput("root.tar")),
        ("type=tar", TarOutput("-")),
        ("type=local,dest=-", TarOutput("-")),
    ],
)
def test_specs(text: str, expected: object) -> None:
    assert parse_output(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("type=tar,dest=a,name=b", "has no option 'name'"),
        ("dest=out", "type= is required"),
        ("type=s3,dest=x", "unknown type 's3'"),
        ("type=local", "needs dest=DIR"),
        ("type=local,dest=", "needs dest=DIR"),
        ("type=local,dest=a,name=b", "has no option 'name'"),
        ("type=oci,dest=a,tar=maybe", "tar=maybe is not true or false"),
        ("type=oci,dest=a,bogus", "'bogus' is not key=value"),
        ("type=oci,dest=a,dest=b", "dest= is given twice"),
        ("type=image,compression=zstd", "compression=zstd is not supported"),
        ("type=docker,oci-mediatypes=false", "oci-mediatypes=false is not supported"),
        ('type=oci,"dest=a', "not valid CSV"),
    ],
)
def test_bad_specs_are_one_line_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_output(text)
    assert "\n" not in str(caught.value)


def test_one_output_at_most_goes_to_stdout() -> None:
    with pytest.raises(UsageError, match="only one output can go to standard output"):
        outputs_from_flags(["-", "type=oci"], [], push=False, load=False)
    assert outputs_from_flags(["-", "type=oci,dest=o.tar"], [], push=False, load=False) == [
        TarOutput("-"),
        OciOutput("o.tar"),
    ]


def test_push_with_tags_pushes_every_tag() -> None:
    assert outputs_from_flags([], ["r.io/a:1", "r.io/a:2"], push=True, load=False) == [
        ImageOutput(("r.io/a:1", "r.io/a:2"), push=True)
    ]


def test_push_sets_push_on_an_image_output_instead_of_adding_one() -> None:
    specs = outputs_from_flags(["type=image,name=r.io/x:1"], [], push=True, load=False)
    assert specs == [ImageOutput(("r.io/x:1",), push=True)]


def test_load_adds_a_docker_output_named_by_the_tags() -> None:
    specs = outputs_from_flags(["type=oci,dest=o.tar"], ["app:dev"], push=False, load=True)
    assert specs == [OciOutput("o.tar", names=("app:dev",)), DockerOutput(None, ("app:dev",))]


def test_load_keeps_an_existing_docker_output() -> None:
    specs = outputs_from_flags(["type=docker,dest=i.tar"], [], push=False, load=True)
    assert specs == [DockerOutput("i.tar")]


def test_explicit_names_win_over_tags() -> None:
    specs = outputs_from_flags(
        ["type=registry,name=r.io/own:1"], ["r.io/tag:1"], push=False, load=False
    )
    assert specs == [ImageOutput(("r.io/own:1",), push=True)]


def test_tags_alone_go_nowhere() -> None:
    assert outputs_from_flags([], ["app:dev"], push=False, load=False) == []


def test_image_output_must_push() -> None:
    with pytest.raises(UsageError, match="no image store"):
        outputs_from_flags(["type=image,name=r.io/a:1"], [], push=False, load=False)


def test_push_needs_a_name() -> None:
    with pytest.raises(UsageError, match="needs an image name"):
        outputs_from_flags([], [], push=True, load=False)


def test_bad_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="-t 'Bad:Name'"):
        outputs_from_flags([], ["Bad:Name"], push=True, load=False)
    with pytest.raises(UsageError, match=r"output name .r\.io/Up."):
        outputs_from_flags(["type=registry,name=r.io/Up"], [], push=False, load=False)
