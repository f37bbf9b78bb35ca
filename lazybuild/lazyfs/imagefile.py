"""Layers served as EROFS image files, behind an opt-in switch.

With ``LAZYBUILD_LAYER_FORMAT=erofs`` in its environment, the filesystem process
serves each lazily opened eStargz layer as one read-only file, ``/<name>.erofs`` at
the root of its FUSE mount, holding an EROFS image of the layer (``lazybuild.erofs``),
and the kernel mounts that image read-only at ``/<name>``, over an empty directory of
the FUSE mount: the layer's path is what it was, but every lookup, stat, readlink,
getxattr and readdir is answered by the kernel, and only the image's bytes come here.

The switch exists so that this can land before it replaces the per-inode presentation
(``fuse.py`` + ``inodes.py``) and the skeleton workaround (``skeleton.py``); a later
change makes it the default and deletes those. It is read in the filesystem process
(``server.py``, which inherits the variable from the command that starts it) and in
the build's layer mounter (``worker/rootfs.py``, which then stacks no skeleton).

A read of the image: below ``data_start`` a slice of the layout's metadata; above it,
``extents_at`` names the files and file offsets the range covers, each read through
the layer (verified chunks, chunk cache, prefetch, read-ahead, all as before), and
``ErofsLayout.read`` puts them together, zeros for the padding between files.
"""

from __future__ import annotations

import os

LAYER_FORMAT_VARIABLE = "LAZYBUILD_LAYER_FORMAT"
IMAGE_SUFFIX = ".erofs"


def erofs_layers() -> bool:
    """Whether layers are served as EROFS images (``LAZYBUILD_LAYER_FORMAT=erofs``).
    Off by default: a temporary switch until the EROFS path replaces the per-inode
    one (see the module docstring)."""
    return os.environ.get(LAYER_FORMAT_VARIABLE, "").strip().lower() == "erofs"


def image_file_name(layer_name: str) -> str:
    return layer_name + IMAGE_SUFFIX
