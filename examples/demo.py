"""`just demo`: lazybuild's main job on a built-in example, on a fresh machine.

It starts a local registry, makes a Debian image with debootstrap (cached after the
first run), pushes it as an ordinary gzip image, then shows `lazybuild inspect`,
`lazybuild convert` to eStargz, and what the converted image looks like. Finally it reads
one file straight out of the converted layer with HTTP Range requests, and finally runs a
command in the converted image with `lazybuild run` (lazy FUSE mount, overlayfs, runc),
whose fetch report shows how little of the image that took.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from lazybuild.estargz.reader import decompress_chunk
from lazybuild.imagestore import RegistrySource
from lazybuild.layerprobe import probe_layer
from lazybuild.oci.platform import host_platform
from lazybuild.progress import human_size
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support.imagebuild import cached_rootfs_image, push_oci_layout
from tests.support.registry import Registry
from tests.support.rootfs import debootstrap_rootfs

DEMO_FILE = "usr/lib/os-release"


def lazybuild(*args: str) -> None:
    print(f"\n$ lazybuild {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "lazybuild", *args], check=True)


async def read_one_file(reference: str) -> None:
    """Fetch one file of the converted image through the TOC, counting the bytes."""
    async with RegistryClient() as client:
        ref = Reference.parse(reference)
        image = await client.resolve_image(ref, host_platform())
        source = RegistrySource(client, ref)
        for number, layer in enumerate(image.manifest.layers, 1):
            probe = await probe_layer(source, layer, f"layer {number}")
            assert probe.opened is not None
            node = probe.opened.index.lookup(DEMO_FILE)
            if node is None:
                continue
            blob = client.open_blob(ref, layer)
            content = b""
            offset = 0
            while offset < node.size:
                chunk = probe.opened.index.chunk_for_offset(node, offset)
                raw = await blob.read_at(chunk.offset, chunk.end - chunk.offset)
                content += decompress_chunk(raw, chunk)
                offset = chunk.chunk_offset + chunk.size
            print(f"\n/{DEMO_FILE} read lazily from layer {number} ({human_size(layer.size)}):")
            print("  " + content.decode().strip().replace("\n", "\n  "))
            print(
                f"  fetched {human_size(blob.stats.bytes_received)} in {blob.stats.requests} "
                f"range request(s), plus the layer's footer and TOC"
            )
            return
    raise SystemExit(f"{DEMO_FILE} not found in {reference}")


def main() -> None:
    print("making a Debian root filesystem with debootstrap (cached after the first run)...")
    layout = cached_rootfs_image(debootstrap_rootfs("minbase", []))
    with tempfile.TemporaryDirectory(prefix="lazybuild-demo-") as tmp, Registry(Path(tmp)) as reg:
        plain = f"{reg.host}/demo/debian:gzip"
        converted = f"{reg.host}/demo/debian:estargz"
        push_oci_layout(layout, reg.host, "demo/debian", "gzip")
        print(f"pushed a plain gzip image to {plain}")
        lazybuild("inspect", plain)
        lazybuild("convert", plain, converted)
        lazybuild("inspect", converted)
        trio.run(read_one_file, converted)
        # The same image as a container's root filesystem, mounted lazily through FUSE.
        lazybuild("--state-dir", f"{tmp}/state", "run", converted, "cat", "/etc/debian_version")


if __name__ == "__main__":
    main()
