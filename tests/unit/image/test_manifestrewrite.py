"""The documents an image rewrite writes: config with new diff_ids, then its manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from lazybuild.image.manifestrewrite import put_image, rewrite_config
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor, descriptor_for
from lazybuild.oci.digest import sha256_digest

CONFIG: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": ["PATH=/bin"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
    "history": [{"created_by": "ADD rootfs"}],
}
LAYER = Descriptor(mediatypes.OCI_LAYER_GZIP, "sha256:" + "1" * 64, 10)


class _Target:
    """Records what is put, in order."""

    description = "memory"

    def __init__(self) -> None:
        self.puts: list[tuple[str, Descriptor, bytes, bool | None]] = []

    async def has_blob(self, descriptor: Descriptor) -> bool:
        return False  # put_image puts what it is given: it never asks

    async def mount_blob(self, descriptor: Descriptor) -> bool:
        return False

    async def put_blob(self, descriptor: Descriptor, source: Path | bytes) -> str:
        assert isinstance(source, bytes)
        self.puts.append(("blob", descriptor, source, None))
        return "uploaded"

    async def put_manifest(self, descriptor: Descriptor, data: bytes, *, root: bool) -> None:
        self.puts.append(("manifest", descriptor, data, root))


def test_descriptor_for_names_the_bytes() -> None:
    assert descriptor_for(mediatypes.OCI_CONFIG, b"{}") == Descriptor(
        mediatypes.OCI_CONFIG, sha256_digest(b"{}"), 2
    )


def test_only_the_diff_ids_change_and_the_source_config_is_left_alone() -> None:
    new = "sha256:" + "2" * 64
    rewritten = rewrite_config(CONFIG, [new])
    assert rewritten["rootfs"] == {"type": "layers", "diff_ids": [new]}
    assert {k: v for k, v in rewritten.items() if k != "rootfs"} == {
        k: v for k, v in CONFIG.items() if k != "rootfs"
    }
    assert CONFIG["rootfs"]["diff_ids"] == ["sha256:" + "0" * 64]


def test_the_config_goes_before_the_manifest_that_names_it() -> None:
    target = _Target()
    new = "sha256:" + "2" * 64

    async def put() -> Descriptor:
        return await put_image(
            target, CONFIG, [LAYER], [new], annotations={"a": "b"}, extra={}, root=True
        )

    descriptor = trio.run(put)
    (kind, config, config_bytes, _), (kind2, manifest, manifest_bytes, root) = target.puts
    assert (kind, kind2, root) == ("blob", "manifest", True)
    assert config == descriptor_for(mediatypes.OCI_CONFIG, config_bytes)
    assert json.loads(config_bytes)["rootfs"]["diff_ids"] == [new]
    assert manifest == descriptor == descriptor_for(mediatypes.OCI_MANIFEST, manifest_bytes)
    document = json.loads(manifest_bytes)
    assert document["config"]["digest"] == config.digest
    assert [layer["digest"] for layer in document["layers"]] == [LAYER.digest]
    assert document["annotations"] == {"a": "b"}
