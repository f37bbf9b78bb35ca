"""Reading images out of OCI layouts in tests: manifests, configs, layer blob paths."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from tests.support.imagebuild import (
    Layer,
    copy_layout,
    whiteout_layer_dir,
    write_image,
    write_layer,
)


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


BIG_FILE_SIZE = 9 * (1 << 20) + 123  # three chunks at the default 4 MiB


def make_rich_image(base_layout: Path, workdir: Path) -> Path:
    """A copy of ``base_layout`` with one more layer that exercises every entry kind:
    whiteouts, an opaque directory, a multi-chunk file with a hardlink and a symlink,
    a fifo, a setuid file with odd owners and a binary xattr."""
    root = copy_layout(base_layout, workdir / "layout")
    image = read_layout_image(root)
    layers = [
        Layer(d["digest"], diff_id, d["size"], comment="base")
        for d, diff_id in zip(image.layers, image.config["rootfs"]["diff_ids"], strict=True)
    ]
    upper = whiteout_layer_dir(
        workdir / "upper",
        delete=["etc/motd", "usr/bin/apt-get"],
        opaque={"usr/share/doc": {"README": b"docs were replaced\n"}},
        add={"srv/hello.txt": b"hello\n"},
    )
    big = upper / "srv" / "big.bin"
    big.write_bytes(random.Random(7).randbytes(BIG_FILE_SIZE))
    os.link(big, upper / "srv" / "big-hardlink.bin")
    os.symlink("big.bin", upper / "srv" / "big-symlink")
    os.mkfifo(upper / "srv" / "pipe")
    os.setxattr(upper / "srv" / "hello.txt", "user.lazybuild.note", b"\x00binary\xff")
    os.chown(upper / "srv" / "hello.txt", 1234, 5678)
    os.chmod(upper / "srv" / "hello.txt", 0o4755)
    layers.append(write_layer(image.layout, upper, comment="upper"))
    write_image(image.layout, layers, tag="latest")
    return root


def replace_layer(root: Path, position: int, blob: bytes | None = None, **descriptor: Any) -> None:
    """Point layer ``position`` of the layout's image at ``blob`` (stored under its own
    digest) and/or override descriptor fields such as ``mediaType`` or ``annotations``."""
    image = read_layout_image(root)
    manifest = json.loads(json.dumps(image.manifest))
    layer = manifest["layers"][position]
    if blob is not None:
        layer["digest"] = image.layout.write_blob(blob)
        layer["size"] = len(blob)
    layer.update(descriptor)
    data = json.dumps(manifest).encode()
    digest = image.layout.write_blob(data)
    tag = image.layout.resolve(None).annotations.get("org.opencontainers.image.ref.name")
    image.layout.add_ref(Descriptor(manifest["mediaType"], digest, len(data)), tag)
