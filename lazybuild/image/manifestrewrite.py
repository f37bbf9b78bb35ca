"""An image's documents read for a rewrite, and written again around its new layers.

Rewriting a layer changes its uncompressed tar, hence its diff_id: the config's
``rootfs.diff_ids`` follow the new layers (history, env and everything else stay), and
the manifest names the new config and layers. OCI media types are used throughout
(Docker media types drop the eStargz annotations in some tools).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lazybuild.errors import FormatError
from lazybuild.image.store import ImageSource, ImageTarget
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor, descriptor_for
from lazybuild.oci.manifest import (
    Index,
    Manifest,
    config_diff_ids,
    encode_json,
    load_config,
    parse_document,
)
from lazybuild.progress.lines import short_digest

__all__ = ["fetch_child", "put_document", "put_image", "rewrite_config", "source_config"]


async def fetch_child(source: ImageSource, entry: Descriptor) -> Manifest | Index:
    """The document an index entry names, parsed (the caller says what it expected)."""
    data = await source.fetch(entry)
    return parse_document(
        data, entry.media_type, f"{source.description} ({short_digest(entry.digest)})"
    )


async def source_config(
    source: ImageSource, manifest: Manifest, where: str
) -> tuple[dict[str, Any], list[str]]:
    """The manifest's config and its diff_ids, one for each layer (else it is broken)."""
    config = load_config(await source.fetch(manifest.config), f"{where} config")
    diff_ids = config_diff_ids(config)
    if len(diff_ids) != len(manifest.layers):
        raise FormatError(
            f"{where}: config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers"
        )
    return config, diff_ids


def rewrite_config(config: Mapping[str, Any], diff_ids: Sequence[str]) -> dict[str, Any]:
    """The config with new diff_ids; history, env and everything else untouched."""
    rewritten: dict[str, Any] = json.loads(json.dumps(config))
    rewritten["rootfs"] = {**config["rootfs"], "type": "layers", "diff_ids": list(diff_ids)}
    return rewritten


async def put_document(
    target: ImageTarget, media_type: str, data: bytes, *, root: bool
) -> Descriptor:
    """A manifest or index put to the target; ``root``: the one its name (tag) names."""
    descriptor = descriptor_for(media_type, data)
    await target.put_manifest(descriptor, data, root=root)
    return descriptor


async def put_image(
    target: ImageTarget,
    config: Mapping[str, Any],
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    *,
    annotations: dict[str, str],
    extra: dict[str, Any],
    root: bool,
) -> Descriptor:
    """The source image's ``config`` with ``diff_ids``, then the manifest of it and
    ``layers`` (with the source manifest's ``annotations`` and other fields ``extra``),
    put to the target: the config first, as registries want what a manifest names to
    exist before it."""
    config_bytes = encode_json(rewrite_config(config, diff_ids))
    config_descriptor = descriptor_for(mediatypes.OCI_CONFIG, config_bytes)
    await target.put_blob(config_descriptor, config_bytes)
    manifest = Manifest(
        mediatypes.OCI_MANIFEST, config_descriptor, tuple(layers), annotations, extra
    )
    return await put_document(target, mediatypes.OCI_MANIFEST, manifest.encode(), root=root)
