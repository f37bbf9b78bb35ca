from __future__ import annotations

import pytest

from lazybuild.errors import InvalidReferenceError
from lazybuild.registry.reference import Reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("debian", "docker.io", "library/debian", "latest", None),
        ("debian:12", "docker.io", "library/debian", "12", None),
        ("library/debian", "docker.io", "library/debian", "latest", None),
        ("user/app:v1.2_3-x", "docker.io", "user/app", "v1.2_3-x", None),
        ("docker.io/debian", "docker.io", "library/debian", "latest", None),
        ("index.docker.io/debian", "docker.io", "library/debian", "latest", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("localhost", "docker.io", "library/localhost", "latest", None),
        ("a.b/c", "a.b", "c", "latest", None),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None),
        ("Registry/app", "Registry", "app", "latest", None),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
        (f"debian@{DIGEST}", "docker.io", "library/debian", None, DIGEST),
        (f"ghcr.io/o/r:tag@{DIGEST}", "ghcr.io", "o/r", "tag", DIGEST),
        ("a.b/my__app/sub-dir.x/a--b", "a.b", "my__app/sub-dir.x/a--b", "latest", None),
    ],
)
def test_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    # The canonical text parses back to the same reference.
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        (" debian", "padded"),
        ("Debian", "lowercase"),
        ("a.b/Upper", "lowercase"),
        ("debian:", "bad tag"),
        ("debian:-x", "bad tag"),
        ("debian:" + "t" * 129, "bad tag"),
        ("debian@sha256:abc", "bad digest"),
        ("debian@", "bad digest"),
        ("a.b/", "no repository"),
        ("a.b/x//y", "bad path component"),
        ("a.b/x/_y", "bad path component"),
        ("a.b/x-", "bad path component"),
        ("-bad.host/x", "bad registry"),
        ("a.b/x:1:2", "bad"),
    ],
)
def test_parse_rejects_junk(text: str, complaint: str) -> None:
    with pytest.raises(InvalidReferenceError, match=complaint):
        Reference.parse(text)


def test_canonical_text_and_hosts() -> None:
    ref = Reference.parse("debian")
    assert str(ref) == "docker.io/library/debian:latest"
    assert ref.name == "docker.io/library/debian"
    assert ref.api_host == "registry-1.docker.io"
    local = Reference.parse("localhost:5000/x")
    assert local.api_host == "localhost:5000"


def test_with_digest_and_tag() -> None:
    ref = Reference.parse("a.b/c:v1")
    pinned = ref.with_digest(DIGEST)
    assert str(pinned) == f"a.b/c:v1@{DIGEST}"
    assert pinned.manifest_key == DIGEST
    assert ref.manifest_key == "v1"
    assert str(pinned.with_tag("v2")) == f"a.b/c:v2@{DIGEST}"
    with pytest.raises(InvalidReferenceError):
        ref.with_digest("sha256:zz")
    with pytest.raises(InvalidReferenceError):
        ref.with_tag("bad tag")


def test_by_digest_drops_the_tag() -> None:
    digest = "sha256:" + "a" * 64
    ref = Reference.parse("registry.example:5000/team/app:v1").by_digest(digest)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "registry.example:5000",
        "team/app",
        None,
        digest,
    )
    assert str(ref) == f"registry.example:5000/team/app@{digest}"
