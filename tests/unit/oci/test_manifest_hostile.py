"""Manifests, indexes and configs that are JSON but not what they claim: FormatError only."""

from __future__ import annotations

import pytest

from lazybuild.errors import FormatError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import load_config, parse_document

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b'{"schemaVersion": 2, "layers": [], "x": ' + b"1" * 5000 + b"}",
        b'{"schemaVersion": 2, "manifests": [], "annotations": [1]}',
        b'{"schemaVersion": 2, "manifests": [], "annotations": {"a": {"b": 1}}}',
    ],
)
def test_documents_that_are_not_manifests(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_document(data, "", "manifest")


def test_deep_config_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        load_config(b'{"a":' * 100_000, "config")


@pytest.mark.parametrize(
    "fields",
    [
        {"size": True},
        {"size": 1 << 64},
        {"urls": 5},
        {"urls": [1]},
        {"digest": ["sha256:" + "a" * 64]},
        {"digest": DIGEST + "\n"},
        {"annotations": {"k": 1}},
        {"artifactType": {"a": 1}},
    ],
)
def test_descriptor_fields_of_the_wrong_type(fields: dict[str, object]) -> None:
    document = {"mediaType": "application/octet-stream", "digest": DIGEST, "size": 1, **fields}
    with pytest.raises(FormatError):
        Descriptor.from_json(document)
