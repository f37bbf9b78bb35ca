"""Docker-style multi-layer OCI images from directories, with plain gzip layers.

Layers are made with Python's tarfile so that they look like what `docker build`
pushes: names without a "./" prefix, numeric owners only, xattrs as PAX
SCHILY.xattr records, hardlinks and device nodes kept, entries in sorted order,
and a gzip stream with no timestamp, so the same tree always gives the same digest.
The layout itself is written with the product's `lazybuild.oci.layout.OciLayout`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from tests.support.cache import cached_dir
from tests.support.push import push_oci_layout

__all__ = [  # push_oci_layout is re-exported: images are built here and pushed with it
    "Layer",
    "builder_image",
    "cached_builder_image",
    "cached_rootfs_image",
    "copy_layout",
    "delta_paths",
    "image_from_dirs",
    "image_from_rootfs",
    "push_oci_layout",
    "rootfs_layers",
    "tiny_image",
    "whiteout_layer_dir",
    "write_image",
    "write_layer",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# A fixed creation time keeps configs (and so image digests) reproducible.
CREATED = "2024-01-01T00:00:00Z"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


@dataclass(frozen=True)
class Layer:
    """A gzip layer blob stored in a layout, with what a manifest and config need."""

    digest: str  # of the compressed blob
    diff_id: str  # of the uncompressed tar
    size: int  # compressed bytes
    comment: str = ""

    def descriptor(self) -> Descriptor:
        return Descriptor(mediatypes.OCI_LAYER_GZIP, self.digest, self.size)


class _HashingWriter:
    """File-like sink that hashes what tarfile writes before gzip compresses it."""

    def __init__(self, sink: gzip.GzipFile) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.sink.write(data)


def host_architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _in_selection(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether `rel` goes in a layer that holds `include` (all if empty) minus `exclude`.

    Ancestors of an included prefix are kept too so the layer's tree is well formed.
    """
    if any(rel == e or rel.startswith(e + "/") for e in exclude):
        return False
    if not include:
        return True
    return any(rel == i or rel.startswith(i + "/") or i.startswith(rel + "/") for i in include)


def _xattrs(path: Path) -> dict[str, str]:
    headers: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return headers
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        # tarfile writes non-UTF-8 values byte for byte when given surrogate escapes.
        headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return headers


def _tar_entries(tar: tarfile.TarFile, root: Path, paths: Iterable[str]) -> None:
    for rel in paths:
        path = root / rel
        info = tar.gettarinfo(str(path), arcname=rel)
        if info is None:  # sockets cannot be archived; docker skips them too
            continue
        info.uname = info.gname = ""  # numeric owners only, like docker layers
        # Whole seconds: debootstrap leaves sub-second mtimes that tools would otherwise
        # show rounded or truncated, and no test should depend on which.
        info.mtime = int(info.mtime)
        xattrs = _xattrs(path)
        if xattrs:
            info.pax_headers = {**info.pax_headers, **xattrs}
        if info.isreg():
            with path.open("rb") as data:
                tar.addfile(info, data)
        else:
            tar.addfile(info)


def iter_tree(root: Path) -> Iterator[str]:
    """Every relative path below `root`, depth first, siblings in byte order."""

    def visit(rel: str) -> Iterator[str]:
        directory = root / rel if rel else root
        for name in sorted(os.listdir(directory), key=os.fsencode):
            child = f"{rel}/{name}" if rel else name
            yield child
            if stat.S_ISDIR(os.lstat(root / child).st_mode):
                yield from visit(child)

    return visit("")


def write_layer(
    layout: OciLayout,
    source: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    only: Iterable[str] | None = None,
    comment: str = "",
    compresslevel: int = 6,
) -> Layer:
    """Tar+gzip the tree at `source` into a blob of `layout`: all of it, the subtrees
    `include` minus `exclude`, or exactly the relative paths `only` (in tree order)."""
    include = [p.strip("/") for p in include]
    exclude = [p.strip("/") for p in exclude]
    paths: Iterable[str]
    if only is not None:
        paths = only
    else:
        paths = (rel for rel in iter_tree(source) if _in_selection(rel, include, exclude))
    with layout.temp_blob_file() as blob:
        # mtime=0 and no file name keep the gzip header, and so the digest, stable.
        with gzip.GzipFile(
            fileobj=blob, mode="wb", compresslevel=compresslevel, mtime=0, filename=""
        ) as gz:
            hashing = _HashingWriter(gz)
            sink = cast(IO[bytes], hashing)  # tarfile only calls write() in stream mode
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _tar_entries(tar, source, paths)
        blob_path = Path(blob.name)
    digest = "sha256:" + _file_sha256(blob_path)
    size = blob_path.stat().st_size
    layout.adopt_blob_file(blob_path, digest)
    return Layer(digest, "sha256:" + hashing.sha256.hexdigest(), size, comment)


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def write_image(
    layout: OciLayout,
    layers: Sequence[Layer],
    *,
    tag: str = "latest",
    cmd: Sequence[str] = ("/bin/sh",),
    env: Sequence[str] = DEFAULT_ENV,
    labels: Mapping[str, str] | None = None,
) -> Descriptor:
    """Write config and manifest for `layers` and tag the manifest in index.json."""
    config = {
        "created": CREATED,
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": list(env), "Cmd": list(cmd), "Labels": dict(labels or {})},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": layer.comment or f"layer {n}"}
            for n, layer in enumerate(layers)
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = layout.write_blob(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": mediatypes.OCI_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [layer.descriptor().to_json() for layer in layers],
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    descriptor = Descriptor(
        mediatypes.OCI_MANIFEST, layout.write_blob(manifest_bytes), len(manifest_bytes)
    )
    layout.add_ref(descriptor, tag)
    return descriptor


def image_from_dirs(
    layout_dir: Path,
    layer_dirs: Sequence[Path],
    tag: str = "latest",
    cmd: Sequence[str] = ("/bin/sh",),
) -> Descriptor:
    """An image with one layer per directory, bottom layer first."""
    layout = OciLayout.create(layout_dir)
    layers = [write_layer(layout, d, comment=f"ADD {d.name}") for d in layer_dirs]
    return write_image(layout, layers, tag=tag, cmd=cmd)


def rootfs_layers(
    layout: OciLayout, rootfs: Path, split_at: Sequence[str] = ("usr/share", "usr/lib")
) -> list[Layer]:
    """Layers of `rootfs`: the tree minus `split_at`, then one layer per `split_at`
    subtree (in order, each minus the later ones nested in it)."""
    split = [s.strip("/") for s in split_at]
    # The cache's completion note is not part of the filesystem.
    base_exclude = [*split, ".lazybuild-rootfs"]
    layers = [write_layer(layout, rootfs, exclude=base_exclude, comment="debootstrap base")]
    for n, prefix in enumerate(split):
        later = [s for s in split[n + 1 :] if s.startswith(prefix + "/")]
        layers.append(
            write_layer(layout, rootfs, include=[prefix], exclude=later, comment=f"ADD /{prefix}")
        )
    return layers


def image_from_rootfs(
    layout_dir: Path,
    rootfs: Path,
    *,
    split_at: Sequence[str] = ("usr/share", "usr/lib"),
    tag: str = "latest",
    cmd: Sequence[str] = ("/bin/sh",),
    extra_layers: Sequence[Path] = (),
) -> Descriptor:
    """A multi-layer image of `rootfs` (see rootfs_layers), then `extra_layers`."""
    layout = OciLayout.create(layout_dir)
    layers = rootfs_layers(layout, rootfs, split_at)
    layers += [write_layer(layout, d, comment=f"ADD {d.name}") for d in extra_layers]
    return write_image(layout, layers, tag=tag, cmd=cmd)


def _entry_signature(path: Path) -> tuple[object, ...] | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    size = 0 if stat.S_ISDIR(info.st_mode) else info.st_size
    return (info.st_mode, info.st_uid, info.st_gid, size, info.st_mtime_ns, target)


def delta_paths(lower: Path, upper: Path) -> list[str]:
    """Paths of `upper` that are new or changed against `lower`, with their parent
    directories, in tree order: what `RUN apt-get install` would add as a layer.
    (Deletions are not looked for: installing packages does not remove files.)"""
    changed = [
        rel
        for rel in iter_tree(upper)
        if rel != ".lazybuild-rootfs"
        and _entry_signature(upper / rel) != _entry_signature(lower / rel)
    ]
    wanted = set(changed)
    for rel in changed:
        parts = rel.split("/")
        wanted.update("/".join(parts[:n]) for n in range(1, len(parts)))
    return [rel for rel in iter_tree(upper) if rel in wanted]


def builder_image(
    layout_dir: Path, base_rootfs: Path, rootfs: Path, tag: str = "latest"
) -> Descriptor:
    """An image laid out like `FROM debian` + `RUN apt-get install ...`: the layers of
    `base_rootfs`, then one layer with what `rootfs` (base + packages) adds to it."""
    layout = OciLayout.create(layout_dir)
    layers = rootfs_layers(layout, base_rootfs)
    layers.append(
        write_layer(layout, rootfs, only=delta_paths(base_rootfs, rootfs), comment="packages")
    )
    return write_image(layout, layers, tag=tag)


def cached_builder_image(base_rootfs: Path, rootfs: Path) -> Path:
    """builder_image() built once into the test cache (tag "latest"; read-only)."""
    key = f"oci-v{IMAGE_FORMAT_VERSION}-builder-{base_rootfs.name}-{rootfs.name}"
    return cached_dir(
        key, lambda scratch: _finish(scratch, builder_image(scratch, base_rootfs, rootfs))
    )


def toolchain_image(
    layout_dir: Path, base_rootfs: Path, toolchains: Sequence[Path], tag: str = "latest"
) -> Descriptor:
    """A big builder image: the layers of `base_rootfs`, then for each rootfs in
    `toolchains` (base + some packages) one layer with what it adds, in order. Files
    the toolchains share (dpkg's database, say) come from the last one; every
    toolchain's own programs and libraries are intact."""
    layout = OciLayout.create(layout_dir)
    layers = rootfs_layers(layout, base_rootfs)
    for rootfs in toolchains:
        delta = delta_paths(base_rootfs, rootfs)
        layers.append(write_layer(layout, rootfs, only=delta, comment=rootfs.name))
    return write_image(layout, layers, tag=tag)


def cached_toolchain_image(base_rootfs: Path, toolchains: Sequence[Path]) -> Path:
    """toolchain_image() built once into the test cache (tag "latest"; read-only)."""
    names = "-".join(rootfs.name.split("-")[-1] for rootfs in toolchains)
    key = f"oci-v{IMAGE_FORMAT_VERSION}-toolchains-{base_rootfs.name}-{names}"
    return cached_dir(
        key,
        lambda scratch: _finish(scratch, toolchain_image(scratch, base_rootfs, toolchains)),
    )


def _finish(layout_dir: Path, _: Descriptor) -> None:
    shutil.rmtree(layout_dir / "blobs" / ".staging", ignore_errors=True)


# What /bin/echo and /bin/cat need: usrmerge symlinks, the C library and the loader.
TINY_RUNTIME_GLOBS = (
    "bin",
    "lib",
    "lib64",
    "usr/lib64",
    "usr/lib/*-linux-gnu/libc.so.6",
    "usr/lib/*-linux-gnu/ld-linux*.so*",
    "usr/lib64/ld-linux*.so*",
)


def tiny_image(layout_dir: Path, rootfs: Path, tag: str = "latest") -> Descriptor:
    """A ~1 MB three-layer image cut from a Debian rootfs, for fast daemon tests:

    1. runtime: libc + loader + usrmerge symlinks;
    2. tools: /usr/bin/echo, /usr/bin/cat, /etc/motd, /opt/data/old.txt;
    3. an upper layer that whiteouts /etc/motd, replaces /opt/data opaquely with
       new.txt, and adds /hello.txt ("hello from the upper layer").
    """
    layout = OciLayout.create(layout_dir)
    runtime = sorted(
        str(path.relative_to(rootfs))
        for pattern in TINY_RUNTIME_GLOBS
        for path in rootfs.glob(pattern)
    )
    layers = [write_layer(layout, rootfs, include=runtime, comment="runtime")]
    with tempfile.TemporaryDirectory() as scratch:
        tools = Path(scratch) / "tools"
        for binary in ("usr/bin/echo", "usr/bin/cat"):
            (tools / binary).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rootfs / binary, tools / binary)
        _write_file(tools / "etc/motd", b"motd from the tools layer\n")
        _write_file(tools / "opt/data/old.txt", b"old\n")
        layers.append(write_layer(layout, tools, comment="tools"))
        upper = whiteout_layer_dir(
            Path(scratch) / "upper",
            delete=["etc/motd"],
            opaque={"opt/data": {"new.txt": b"new\n"}},
            add={"hello.txt": b"hello from the upper layer\n"},
        )
        layers.append(write_layer(layout, upper, comment="whiteouts"))
    return write_image(layout, layers, tag=tag, cmd=("/usr/bin/cat", "/hello.txt"))


def runtime_image(layout_dir: Path, rootfs: Path, tag: str = "latest") -> Descriptor:
    """A slim one-layer runtime image: the C library, its loader and the usrmerge links."""
    layout = OciLayout.create(layout_dir)
    runtime = sorted(
        str(path.relative_to(rootfs))
        for pattern in TINY_RUNTIME_GLOBS
        for path in rootfs.glob(pattern)
    )
    layers = [write_layer(layout, rootfs, include=runtime, comment="C runtime")]
    return write_image(layout, layers, tag=tag, cmd=("/bin/sh",))


def cached_runtime_image(rootfs: Path) -> Path:
    """runtime_image() built once into the test cache (tag "latest"; read-only)."""
    key = f"oci-v{IMAGE_FORMAT_VERSION}-runtime-{rootfs.name}"
    return cached_dir(key, lambda scratch: _finish(scratch, runtime_image(scratch, rootfs)))


# Bump when the layer or config format above changes, so cached layouts are rebuilt.
IMAGE_FORMAT_VERSION = 3


def cached_rootfs_image(rootfs: Path, split_at: Sequence[str] = ("usr/share", "usr/lib")) -> Path:
    """The OCI layout of `image_from_rootfs(rootfs)`, built once into the test cache.

    Tagged "latest"; treat it as read-only (use copy_layout for a private copy).
    """
    split_key = hashlib.sha256("|".join(split_at).encode()).hexdigest()[:8]
    key = f"oci-v{IMAGE_FORMAT_VERSION}-{rootfs.name}-{split_key}"
    return cached_dir(key, lambda scratch: _build_rootfs_layout(scratch, rootfs, split_at))


def _build_rootfs_layout(scratch: Path, rootfs: Path, split_at: Sequence[str]) -> None:
    _finish(scratch, image_from_rootfs(scratch, rootfs, split_at=split_at))


def whiteout_layer_dir(
    dest: Path,
    delete: Sequence[str] = (),
    opaque: Mapping[str, Mapping[str, bytes]] | None = None,
    add: Mapping[str, bytes] | None = None,
) -> Path:
    """A directory to tar as an upper layer: whiteouts for `delete`, each `opaque` dir
    replaced by the given files (behind a `.wh..wh..opq` marker), and `add` files.

    Paths are relative to the image root, e.g. delete=["etc/motd"],
    opaque={"usr/share/doc": {"README": b"..."}}, add={"hello.txt": b"hi\\n"}.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for rel in delete:
        parent, _, name = rel.strip("/").rpartition("/")
        target = dest / parent
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{WHITEOUT_PREFIX}{name}").write_bytes(b"")
    for directory, files in (opaque or {}).items():
        target = dest / directory.strip("/")
        target.mkdir(parents=True, exist_ok=True)
        (target / OPAQUE_MARKER).write_bytes(b"")
        for rel, data in files.items():
            _write_file(target / rel, data)
    for rel, data in (add or {}).items():
        _write_file(dest / rel.strip("/"), data)
    return dest


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def copy_layout(source: Path, dest: Path) -> Path:
    """A private copy of a (cached) layout: blobs hardlinked (they are immutable and
    named by digest), index.json and oci-layout copied so the copy can be re-tagged."""

    def link_or_copy(src: str, dst: str) -> object:
        if f"{os.sep}blobs{os.sep}" in src:
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy)
    return dest
