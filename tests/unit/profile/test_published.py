"""The published workload record mapped onto the image's layers for a run's prefetch."""

from __future__ import annotations

from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.oci.platform import Platform
from lazybuild.profile.artifact import find_record, record_artifact
from lazybuild.profile.published import prefetch_plan
from lazybuild.profile.record import RecordEntry
from lazybuild.registry.client import ResolvedImage
from lazybuild.registry.reference import Reference

MANIFEST_DIGEST = "sha256:" + "a" * 64


def _image(layers: int) -> ResolvedImage:
    config = Descriptor(mediatypes.OCI_CONFIG, "sha256:" + "c" * 64, 2)
    descriptors = tuple(
        Descriptor(mediatypes.OCI_LAYER_GZIP, "sha256:" + f"{n}" * 64, 10) for n in range(layers)
    )
    manifest = Manifest(mediatypes.OCI_MANIFEST, config, descriptors, {}, {})
    reference = Reference.parse(f"registry.test/app@{MANIFEST_DIGEST}")
    return ResolvedImage(reference, None, MANIFEST_DIGEST, manifest, b"", {}, b"")


def test_recorded_paths_go_to_their_layers_in_record_order() -> None:
    image = _image(3)
    entries = [
        RecordEntry("bin/sh", MANIFEST_DIGEST, 0),
        RecordEntry("app/main", None, 2),
        RecordEntry("lib/libc.so.6", MANIFEST_DIGEST, 0),
        RecordEntry("other/manifest", "sha256:" + "b" * 64, 1),  # about another image
        RecordEntry("no/layer"),  # nothing says which layer serves it
        RecordEntry("beyond/the/top", None, 3),
        RecordEntry("lib/modules", None, 2, ((0, 65536), (9 << 20, 131072))),
    ]
    digests = [layer.digest for layer in image.manifest.layers]
    plan = prefetch_plan(entries, image)
    assert plan.files == {
        digests[0]: ["bin/sh", "lib/libc.so.6"],
        digests[2]: ["app/main", "lib/modules"],
    }
    # The places read of a big file go with it, by layer and path.
    assert plan.ranges == {digests[2]: {"lib/modules": [(0, 65536), (9 << 20, 131072)]}}


def test_the_record_about_the_chosen_manifest_is_found() -> None:
    amd64 = Descriptor(mediatypes.OCI_MANIFEST, MANIFEST_DIGEST, 100)
    arm64 = Descriptor(mediatypes.OCI_MANIFEST, "sha256:" + "d" * 64, 100)
    for_arm = record_artifact(b"{}\n", arm64).manifest
    for_amd = record_artifact(b"{}\n", amd64).manifest
    index = Index(
        mediatypes.OCI_INDEX,
        (
            Descriptor(
                amd64.media_type, amd64.digest, amd64.size, platform=Platform("linux", "amd64")
            ),
            Descriptor(
                arm64.media_type, arm64.digest, arm64.size, platform=Platform("linux", "arm64")
            ),
            for_arm,
            for_amd,
        ),
    )
    assert find_record(index, MANIFEST_DIGEST) == for_amd
    assert find_record(index, arm64.digest) == for_arm
    assert find_record(index, "sha256:" + "e" * 64) is None
    assert find_record(index) == for_arm  # the first, when the subject does not matter
