"""The exporter: a build's layers and image config, written where ``-o``/``--push``/
``--load`` say (a registry, an OCI layout, a docker tarball or engine, a directory).

``outputs`` reads the output flags; ``export`` writes the outputs, from ``layerblobs``
(local layers as cached eStargz blobs), ``image`` (config and manifest), ``content``
(layer bytes on demand), ``registrypush``, ``imagetar`` (OCI layout / docker
archive), ``dockerload`` and ``rootfscopy``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazybuild.lazyexports import lazy_exports

if TYPE_CHECKING:
    from lazybuild.exporter.export import BuiltImage, ExportResult, export_image
    from lazybuild.exporter.image import AssembledImage
    from lazybuild.exporter.layerblobs import LayerBlob, local_layer_blob
    from lazybuild.exporter.outputs import (
        DockerOutput,
        ImageOutput,
        LocalOutput,
        OciOutput,
        OutputSpec,
        outputs_from_flags,
        parse_output,
    )
    from lazybuild.exporter.registrypush import PushReport

__getattr__ = lazy_exports(
    __name__,
    {
        "AssembledImage": "image",
        "BuiltImage": "export",
        "DockerOutput": "outputs",
        "ExportResult": "export",
        "ImageOutput": "outputs",
        "LayerBlob": "layerblobs",
        "LocalOutput": "outputs",
        "OciOutput": "outputs",
        "OutputSpec": "outputs",
        "PushReport": "registrypush",
        "export_image": "export",
        "local_layer_blob": "layerblobs",
        "outputs_from_flags": "outputs",
        "parse_output": "outputs",
    },
)


__all__ = [
    "AssembledImage",
    "BuiltImage",
    "DockerOutput",
    "ExportResult",
    "ImageOutput",
    "LayerBlob",
    "LocalOutput",
    "OciOutput",
    "OutputSpec",
    "PushReport",
    "export_image",
    "local_layer_blob",
    "outputs_from_flags",
    "parse_output",
]
