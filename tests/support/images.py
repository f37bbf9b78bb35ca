"""Reading images out of OCI layouts in tests: manifests, configs, layer blob paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazybuild.oci.layout import OciLayout


@dataclass(frozen=True)
class LayoutImage:
    layout: OciLayout
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest["layers"])

    def blob(self, digest: str) -> Path:
        return self.layout.blob_path(digest)


def read_layout_image(root: Path, tag: str | None = None) -> LayoutImage:
    layout = OciLayout.open(root)
    descriptor = layout.resolve(tag)
    manifest = json.loads(layout.read_blob(descriptor.digest))
    config = json.loads(layout.read_blob(manifest["config"]["digest"]))
    return LayoutImage(layout, descriptor.digest, manifest, config)
