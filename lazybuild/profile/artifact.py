"""The workload record as part of the image: a small artifact next to the image manifest.

The record is too big for an annotation (a Python or Node program reads hundreds to
thousands of files: tens to hundreds of KB of JSON, in a document every pull fetches
and registries cap at a few MB), so it travels as a blob of its own:

* an OCI artifact manifest (``artifactType`` = the record's media type, the empty
  config, one layer: the record in ctr-remote's JSON-lines format, ``subject`` = the
  image manifest, so registries with the referrers API list it as a referrer);
* an OCI index holding the image manifest (with its platform) and the artifact
  manifest with platform ``unknown/unknown`` and BuildKit's attestation convention
  (``vnd.docker.reference.digest`` / ``vnd.docker.reference.type``), which is what
  docker, containerd, BuildKit and lazybuild already skip when choosing an image;
  registries that have no referrers API still keep it (the index references it), and
  copying the index copies the record;
* on the image manifest, the annotation ``dev.lazybuild.workload.record`` with the
  record blob's digest, so a tool holding only the image manifest knows which record
  shaped the layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor, descriptor_for
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.oci.platform import Platform
from lazybuild.profile.record import RECORD_MEDIA_TYPE

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
RECORD_ANNOTATION = "dev.lazybuild.workload.record"
COMMAND_ANNOTATION = "dev.lazybuild.workload.command"
OUTCOME_ANNOTATION = "dev.lazybuild.workload.outcome"
REFERENCE_DIGEST_ANNOTATION = "vnd.docker.reference.digest"
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
REFERENCE_TYPE = "dev.lazybuild.workload-record"
TITLE_ANNOTATION = "org.opencontainers.image.title"
RECORD_TITLE = "workload-record.jsonl"
UNKNOWN_PLATFORM = Platform("unknown", "unknown")


@dataclass(frozen=True)
class RecordArtifact:
    """What to push, blobs first: ``blobs`` then ``manifest`` (not a root)."""

    blobs: tuple[tuple[Descriptor, bytes], ...]
    manifest: Descriptor  # with platform unknown/unknown, ready for the index
    manifest_bytes: bytes


def record_descriptor(record: bytes) -> Descriptor:
    return descriptor_for(RECORD_MEDIA_TYPE, record)


def record_artifact(
    record: bytes,
    subject: Descriptor,
    *,
    command: Sequence[str] = (),
    outcome: Mapping[str, object] | None = None,
) -> RecordArtifact:
    """The artifact manifest for ``record`` about the image manifest ``subject``."""
    empty = descriptor_for(EMPTY_MEDIA_TYPE, EMPTY_BLOB)
    layer = record_descriptor(record).with_annotations({TITLE_ANNOTATION: RECORD_TITLE})
    annotations: dict[str, str] = {}
    if command:
        annotations[COMMAND_ANNOTATION] = json.dumps(list(command))
    if outcome is not None:
        annotations[OUTCOME_ANNOTATION] = json.dumps(dict(outcome), sort_keys=True)
    manifest = Manifest(
        mediatypes.OCI_MANIFEST,
        empty,
        (layer,),
        annotations,
        {
            "artifactType": RECORD_MEDIA_TYPE,
            "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
        },
    )
    data = manifest.encode()
    plain = descriptor_for(mediatypes.OCI_MANIFEST, data)
    entry = Descriptor(
        plain.media_type,
        plain.digest,
        plain.size,
        {
            REFERENCE_DIGEST_ANNOTATION: subject.digest,
            REFERENCE_TYPE_ANNOTATION: REFERENCE_TYPE,
        },
        UNKNOWN_PLATFORM,
        artifact_type=RECORD_MEDIA_TYPE,
    )
    return RecordArtifact(((empty, EMPTY_BLOB), (layer, record)), entry, data)


def index_with_record(
    image: Descriptor, platform: Platform, artifact: RecordArtifact
) -> tuple[Descriptor, bytes]:
    """The OCI index of the image manifest (for ``platform``) and its record artifact."""
    entries = (
        Descriptor(image.media_type, image.digest, image.size, platform=platform),
        artifact.manifest,
    )
    data = Index(mediatypes.OCI_INDEX, entries).encode()
    return descriptor_for(mediatypes.OCI_INDEX, data), data


def find_record(index: Index, subject: str | None = None) -> Descriptor | None:
    """The record artifact manifest listed in ``index`` (about the image manifest
    ``subject``, when given), if any."""
    for entry in index.manifests:
        if entry.annotations.get(REFERENCE_TYPE_ANNOTATION) != REFERENCE_TYPE:
            continue
        if subject is None or entry.annotations.get(REFERENCE_DIGEST_ANNOTATION) == subject:
            return entry
    return None
