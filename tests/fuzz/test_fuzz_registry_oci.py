"""Fuzzing what registries and configs hand over: ranges, references, manifests, docker config."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lazybuild.errors import LazybuildError, RegistryError
from lazybuild.oci import manifest as manifest_module
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, load_config, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.registry import credentials
from lazybuild.registry.ranges import (
    multipart_boundary,
    parse_content_range,
    parse_multipart_byteranges,
)
from lazybuild.registry.reference import Reference
from tests.fuzz.fuzzkit import (
    TEST_TIMEOUT_SECONDS,
    bytes_like,
    holds_invariant,
    mutated,
    seed,
    seeds,
    text_like,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_SECONDS)


@given(
    st.one_of(
        st.text(max_size=60),
        st.from_regex(r"\s*bytes\s+[0-9]{1,25}-[0-9]{1,25}/([0-9]{1,25}|\*)\s*", fullmatch=True),
    )
)
@example("bytes 1-0/5")
@example("bytes 0-4/4")
def test_content_range(value: str) -> None:
    parsed = holds_invariant(lambda: parse_content_range(value, "fuzz"), allowed=(RegistryError,))
    if parsed is not None:
        assert 0 <= parsed.start <= parsed.end
        assert parsed.total is None or parsed.end < parsed.total


@given(bytes_like("multipart"), st.sampled_from(["THIS_STRING_SEPARATES", "b", "x"]))
@example(b"--b\n\n", "b")
@example(b"--b\nContent-Range: bytes 0-99999999999/*\n\n", "b")
def test_multipart_byteranges(body: bytes, boundary: str) -> None:
    parts = holds_invariant(
        lambda: parse_multipart_byteranges(body, boundary, "fuzz"), allowed=(RegistryError,)
    )
    for part in parts or ():
        # Every part's bytes are the body's bytes at the place its header named.
        assert part.data in body
        assert len(part.data) <= len(body)


@given(st.text(max_size=120))
@example('multipart/byteranges; boundary="')
def test_multipart_boundary(content_type: str) -> None:
    holds_invariant(lambda: multipart_boundary(content_type))


@given(text_like("reference", max_size=700))
@example("a" * 700)
@example("[" + ":" * 600 + "]/x")
@example("a." + "a" * 500 + "!/x")
def test_reference(text: str) -> None:
    for line in [text, *text.splitlines()[:8]]:
        reference = holds_invariant(lambda line=line: Reference.parse(line))  # type: ignore[misc]
        if reference is not None:
            # What parses prints back to something that parses to the same reference.
            assert Reference.parse(str(reference)) == reference


_DESCRIPTOR_KEYS = ["mediaType", "digest", "size", "annotations", "platform", "urls"]
_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.none())),
)


@st.composite
def edited_document(draw: st.DrawFn) -> bytes:
    """A seed manifest, index or config with fields set to odd values or removed."""
    document: Any = json.loads(draw(st.sampled_from(seeds("manifest"))))
    for _ in range(draw(st.integers(1, 5))):
        targets: list[dict[str, Any]] = [document]
        for key in ("layers", "manifests"):
            if isinstance(document.get(key), list):
                targets += [d for d in document[key] if isinstance(d, dict)]
        if isinstance(document.get("config"), dict):
            targets.append(document["config"])
        target = draw(st.sampled_from(targets))
        key = draw(
            st.sampled_from(
                [*_DESCRIPTOR_KEYS, "schemaVersion", "layers", "manifests", "config", "rootfs"]
            )
        )
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(_ODD_VALUES)
    return json.dumps(document).encode()


def _parse_everything(data: bytes, media_type: str) -> None:
    document = parse_document(data, media_type, "fuzz")
    document.encode()
    if isinstance(document, Index):
        with contextlib.suppress(LazybuildError):
            document.select(Platform("linux", "amd64"), "fuzz")


@given(
    st.one_of(bytes_like("manifest"), edited_document()),
    st.sampled_from(["", "application/vnd.oci.image.index.v1+json", "text/plain"]),
)
@example(b"[" * 100_000, "")
@example(b'{"schemaVersion":2,"layers":[],"config":' + b"[" * 5000 + b"]" * 5000 + b"}", "")
@example(b'{"schemaVersion":2,"manifests":[],"annotations":[1]}', "")
@example(b'{"schemaVersion":2,"manifests":[{"mediaType":"a","digest":"sha256:' + b"a" * 64
         + b'","size":true,"urls":5}]}', "")  # fmt: skip
@example(b'{"schemaVersion": 2, "layers": [], "x": ' + b"1" * 5000 + b"}", "")
def test_manifest_and_index(data: bytes, media_type: str) -> None:
    holds_invariant(lambda: _parse_everything(data, media_type))
    holds_invariant(lambda: load_config(data, "fuzz"))


@given(st.dictionaries(st.sampled_from(_DESCRIPTOR_KEYS), _ODD_VALUES))
def test_descriptor(fields: dict[str, Any]) -> None:
    document = {
        "mediaType": "application/octet-stream",
        "digest": "sha256:" + "a" * 64,
        "size": 1,
        **fields,
    }
    descriptor = holds_invariant(lambda: Descriptor.from_json(document, "fuzz"))
    if descriptor is not None:
        assert Descriptor.from_json(descriptor.to_json()) == descriptor


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        bytes_like("docker_config"), st.sampled_from(seeds("docker_config")).flatmap(mutated)
    )
)
@example(data=b'{"credsStore": "a\\u0000b"}')
@example(data=b'{"credHelpers": {"docker.io": "../../../bin/sh"}}')
@example(data=b'{"auths": {"docker.io": {"auth": "////"}}}')
@example(data=b'{"auths":' * 5000)
def test_docker_config(data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def no_helper(helper: str, server: str) -> None:
        asked.append(helper)  # parsing only: no program is run

    monkeypatch.setattr(credentials, "run_credential_helper", no_helper)
    path = tmp_path / "config.json"
    path.write_bytes(data)
    store = credentials.DockerCredentialStore(path)
    for registry in ("docker.io", "registry.example.com:5000", "ghcr.io", "quay.io"):
        holds_invariant(lambda registry=registry: store.lookup(registry))  # type: ignore[misc]
    for helper in asked:
        assert "/" not in helper and "\0" not in helper


def test_seeds_parse() -> None:
    for data in seeds("manifest"):
        if b'"rootfs"' in data:
            load_config(data, "seed")
        else:
            _parse_everything(data, "")
    assert manifest_module.encode_json({"a": 1}) == b'{"a":1}'
    assert Reference.parse("ubuntu").repository == "library/ubuntu"
    assert seed("multipart", "two-parts").count(b"Content-Range") == 2
