"""Which bytes each exported layer is: its own blob, a rewritten base blob, or the
base image's blob left in its registry."""

from __future__ import annotations

from pathlib import Path

from lazybuild.exporter.content import prepare_layers
from lazybuild.exporter.layerblobs import LayerBlob
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.worker.layers import LocalLayer, RemoteLayer


def _descriptor(digit: str, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, "sha256:" + digit * 64, 10)


def _remote(digit: str) -> RemoteLayer:
    return RemoteLayer(
        _descriptor(digit, mediatypes.DOCKER_LAYER_GZIP),
        f"example.test/base@sha256:{'f' * 64}",
        "sha256:" + digit * 63 + "0",
    )


def test_base_layers_stay_remote_unless_rewritten(tmp_path: Path) -> None:
    first, second = _remote("1"), _remote("2")
    step = LocalLayer("step", tmp_path / "step")
    step_blob = LayerBlob(_descriptor("a"), "sha256:" + "b" * 64, tmp_path / "a.esgz")
    rewritten = LayerBlob(_descriptor("c"), "sha256:" + "d" * 64, tmp_path / "c.esgz")

    kept = prepare_layers([first, second, step], {"step": step_blob})
    assert [layer.remote for layer in kept] == [first, second, None]
    # A Docker media type becomes the OCI one for the same bytes.
    assert kept[0].descriptor.media_type == mediatypes.OCI_LAYER_GZIP
    assert kept[0].descriptor.digest == first.descriptor.digest
    assert kept[2].local_blob == step_blob.path

    optimized = prepare_layers(
        [first, second, step], {"step": step_blob}, {second.descriptor.digest: rewritten}
    )
    assert optimized[0].remote == first
    assert optimized[1].remote is None
    assert optimized[1].local_blob == rewritten.path
    assert (optimized[1].descriptor, optimized[1].diff_id) == (
        rewritten.descriptor,
        rewritten.diff_id,
    )
