"""Media types lazybuild reads and writes, and the questions asked of them."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
IMAGE_INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

GZIP_LAYERS = frozenset(
    {OCI_LAYER_GZIP, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP}
)
ZSTD_LAYERS = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_ZSTD})
TAR_LAYERS = frozenset({OCI_LAYER_TAR, OCI_LAYER_NONDIST_TAR, DOCKER_LAYER_TAR})
LAYERS = GZIP_LAYERS | ZSTD_LAYERS | TAR_LAYERS

# The manifest Accept header: indexes first so a multi-platform tag resolves to its index.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

# Layer annotations that carry eStargz facts (stargz-snapshotter names).
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
# lazybuild's own layout hints on the eStargz layers it writes; only ever hints (a wrong
# value costs a request, never correctness: the TOC digest and chunk digests decide).
# Where the TOC starts, so that one read gets it whatever its size:
TOC_OFFSET_ANNOTATION = "dev.lazybuild.estargz.toc-offset"
# Compressed bytes [0, n) holding the prioritized files, fetched as the layer is added,
# before its TOC is there to say so:
PREFETCH_REGION_ANNOTATION = "dev.lazybuild.estargz.prefetch-region-size"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def is_layer(media_type: str) -> bool:
    return media_type in LAYERS


def is_manifest(media_type: str) -> bool:
    return media_type in IMAGE_MANIFESTS


def is_index(media_type: str) -> bool:
    return media_type in IMAGE_INDEXES
