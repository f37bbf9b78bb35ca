"""Pushing a build cache to a registry and fetching one.

Export: the eStargz blobs of the build steps' layers go up first (each the same blob
the image export made of that layer, so an importer's image is the same image), then
the cache document as the config, then the manifest by tag: a tag never names a cache
whose blobs are not all there, whoever exports to it at the same time.

Import: the manifest by tag (its digest then pins everything), the document by digest;
each record becomes a snapshot of remote layers, the cache's own blobs named through
the pinned manifest, base layers through the images they came from. Nothing else is
fetched: a hit's layers are mounted lazily when a later step needs them, and mounted
across repositories when pushed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from lazybuild.errors import FormatError, LazybuildError, one_error
from lazybuild.estargz.writer import WriterOptions
from lazybuild.exporter.layerblobs import LayerBlob, cached_blob, local_layer_blobs
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import sha256_digest
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import layout_of, layout_source
from lazybuild.oci.manifest import Index, Manifest, parse_document
from lazybuild.progress import transfer
from lazybuild.progress.lines import human_size, short_digest
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.remotecache.document import (
    CACHE_ARTIFACT_TYPE,
    CACHE_CONFIG_MEDIA_TYPE,
    MAX_DOCUMENT_BYTES,
    CachedLayer,
    CacheDocument,
    CacheEntry,
    positions_of,
)
from lazybuild.remotecache.records import TouchedRecord
from lazybuild.remotecache.spec import CacheExport, CacheImport
from lazybuild.snapshot.diff import write_upper_as_tar
from lazybuild.solver.cachestore import CacheRecord
from lazybuild.worker.cachemounts import MountContent
from lazybuild.worker.layers import LocalLayer, RemoteLayer, Snapshot
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.rootfs import LayerMounter

__all__ = ["export_cache", "import_cache"]

_PUSH_CONCURRENCY = 4
LOCAL_CACHE_TAG = "buildcache"  # the name of the cache in a local layout's index.json
MAX_MANIFEST_SIZE = 4 << 20


async def export_cache(
    entries: Sequence[TouchedRecord],
    export: CacheExport,
    *,
    store: LayerStore,
    registry: RegistryClient,
    writer_options: WriterOptions,
    prioritized: Mapping[str, Sequence[str]] | None,
    source_date_epoch: int | None,
    progress: Callable[[str], None],
    learned: Mapping[str, Sequence[Sequence[str]]] | None = None,
    mounts: Mapping[str, MountContent] | None = None,
    mounter: LayerMounter | None = None,
) -> str:
    """Push ``entries`` (and the ``learned`` reads of the build's RUN steps) as the cache
    ``export.ref``; returns the manifest digest. ``mounter`` (the build's) lets a cache
    mount whose stack of imported layers has grown too deep go as one layer again."""
    local = [
        layer
        for entry in entries
        for layer in entry.snapshot.layers
        if isinstance(layer, LocalLayer)
    ]
    blobs = await local_layer_blobs(
        local,
        store,
        replace(writer_options, allow_missing_prioritized=True),
        source_date_epoch=source_date_epoch,
        prioritized=prioritized,
    )
    layers: dict[tuple[str, str | None], CachedLayer] = {}
    records = []
    for entry in entries:
        cached = [_cached_layer(layer, blobs) for layer in entry.snapshot.layers]
        for layer in cached:
            layers.setdefault((layer.descriptor.digest, layer.source), layer)
        records.append((entry, cached))
    mount_layers: dict[str, list[CachedLayer]] = {}
    if export.cache_mounts:
        for name, content in (mounts or {}).items():
            if not export.exports_mount(content.mount_id):
                continue
            if mounter is not None and len(content.lowers) >= export.cache_mount_layers:
                progress(
                    f"cache mount {content.mount_id}: {len(content.lowers) + 1} layers, "
                    "exported as one"
                )
                blob = await _merged_mount_blob(mounter, store, name, content)
                chain = [CachedLayer(blob.descriptor, blob.diff_id)]
            else:
                blob = await trio.to_thread.run_sync(_changes_blob, store, name, content.changes)
                chain = [
                    replace(_cached_layer(layer, blobs), from_cache=True)
                    for layer in content.lowers
                ]
                chain.append(CachedLayer(blob.descriptor, blob.diff_id))
            blobs[f"cache-mount:{name}"] = blob
            for layer in chain:
                layers.setdefault((layer.descriptor.digest, layer.source), layer)
            mount_layers[name] = chain
    table = tuple(layers.values())
    document = CacheDocument(
        table,
        tuple(
            CacheEntry(entry.key, positions_of(table, cached), entry.record.created_at)
            for entry, cached in records
        ),
        {key: tuple(tuple(paths) for paths in layers) for key, layers in (learned or {}).items()},
        {name: positions_of(table, chain) for name, chain in mount_layers.items()},
    )
    config = document.encode()
    config_descriptor = Descriptor(CACHE_CONFIG_MEDIA_TYPE, sha256_digest(config), len(config))
    own = [layer for layer in table if layer.source is None]
    paths = {blob.descriptor.digest: blob.path for blob in blobs.values()}
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": CACHE_ARTIFACT_TYPE,
        "config": config_descriptor.to_json(),
        "layers": [layer.descriptor.to_json() for layer in own],
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    if export.ref is not None:
        uploads: list[tuple[Descriptor, bytes | Path]] = [(config_descriptor, config)]
        uploads += [(layer.descriptor, paths[layer.descriptor.digest]) for layer in own]
        # Long uploads said as lines, as an image push says them (transfer.lines_unless_shown).
        with transfer.lines_unless_shown(progress):
            digest = await _push(export.ref, registry, uploads, data)
    else:
        assert export.dest is not None
        files = [paths[layer.descriptor.digest] for layer in own]
        digest = await trio.to_thread.run_sync(_write_layout, export.dest, config, files, data)
    size = sum(layer.descriptor.size for layer in own)
    progress(
        f"cache exported to {export}@{short_digest(digest)}: {len(records)} records, "
        f"{len(own)} layers ({human_size(size)}), mode={export.mode}"
        + (f", {len(mount_layers)} cache mounts" if export.cache_mounts else "")
    )
    return digest


async def _push(
    ref: Reference,
    registry: RegistryClient,
    blobs: Sequence[tuple[Descriptor, bytes | Path]],
    manifest: bytes,
) -> str:
    """Blobs first, all at once, then the manifest by tag."""
    limiter = trio.CapacityLimiter(_PUSH_CONCURRENCY)

    async def push(descriptor: Descriptor, data: bytes | Path) -> None:
        async with limiter:
            await registry.push_blob(ref, descriptor, data)

    with one_error():
        async with trio.open_nursery() as nursery:
            for descriptor, data in blobs:
                nursery.start_soon(push, descriptor, data)
    return await registry.push_manifest(ref, manifest, mediatypes.OCI_MANIFEST)


def _write_layout(root: Path, config: bytes, blobs: Sequence[Path], manifest: bytes) -> str:
    """The cache as an OCI layout at ``root``: blobs (each copied under its digest, checked
    as it is read), then index.json naming the manifest, replaced whole. Earlier blobs
    stay, so a reader of the old index.json still finds what it names."""
    layout = OciLayout.create(root)
    layout.write_blob(config)
    for path in blobs:
        _copy_verified(path, layout)
    digest = layout.write_blob(manifest)
    descriptor = Descriptor(mediatypes.OCI_MANIFEST, digest, len(manifest))
    layout.add_ref(replace(descriptor, artifact_type=CACHE_ARTIFACT_TYPE), LOCAL_CACHE_TAG)
    return digest


def _copy_verified(path: Path, layout: OciLayout) -> None:
    hasher = hashlib.sha256()
    with layout.temp_blob_file() as out, path.open("rb") as source:
        temporary = Path(out.name)
        try:
            while piece := source.read(1 << 20):
                hasher.update(piece)
                out.write(piece)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    layout.adopt_blob_file(temporary, f"sha256:{hasher.hexdigest()}")


def _changes_blob(store: LayerStore, name: str, changes: Path) -> LayerBlob:
    """A cache mount's changes (a directory in overlay form) as an eStargz blob; a new
    one each time, as the directory is not immutable like a step's layer."""
    return cached_blob(
        store,
        f"cache-mount-{name}-{uuid.uuid4().hex}",
        lambda tar: write_upper_as_tar(changes, tar),
        WriterOptions(),
    )


async def _merged_mount_blob(
    mounter: LayerMounter, store: LayerStore, name: str, content: MountContent
) -> LayerBlob:
    """The cache mount's whole content (its imported layers and this build's changes
    merged) as one layer: every lower is read, so it is fetched whole first, in large
    requests rather than a round trip per file."""
    lowers = Snapshot(content.lowers)
    await mounter.fetch_whole(lowers)
    changes = LocalLayer(f"cache-mount-{name}", content.changes)
    with store.staging() as area:
        async with mounter.mounted(Snapshot((*content.lowers, changes)), area.merged) as merged:
            return await trio.to_thread.run_sync(_changes_blob, store, name, merged)


def _cached_layer(layer: LocalLayer | RemoteLayer, blobs: dict[str, LayerBlob]) -> CachedLayer:
    if isinstance(layer, LocalLayer):
        blob = blobs[layer.id]
        return CachedLayer(blob.descriptor, blob.diff_id)
    layout = layout_of(layer.source)
    if layout is not None:
        # A layer of a local cache this build imported: a blob of this cache too, as a
        # document names registry images only.
        path = OciLayout(layout).blob_path(layer.descriptor.digest)
        blob = LayerBlob(layer.descriptor, layer.diff_id, path)
        blobs[f"layout:{layer.descriptor.digest}"] = blob
        return CachedLayer(layer.descriptor, layer.diff_id)
    return CachedLayer(layer.descriptor, layer.diff_id, layer.source, layer.from_cache)


@dataclass
class ImportedCache:
    """Records as records of snapshots of remote layers, learned reads by step key, and
    cache mounts' layers by name."""

    records: dict[str, CacheRecord] = field(default_factory=dict)
    learned: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    mounts: dict[str, tuple[RemoteLayer, ...]] = field(default_factory=dict)

    def layer_digests(self) -> set[str]:
        """The digests of the cache's own layers the records' results hold (not the
        base images' layers under them)."""
        digests: set[str] = set()
        for record in self.records.values():
            try:
                snapshot = Snapshot.from_id(record.result_id)
            except (FormatError, KeyError):
                continue
            digests.update(
                layer.descriptor.digest for layer in snapshot.remote_layers if layer.from_cache
            )
        return digests


async def import_cache(cache: CacheImport, registry: RegistryClient) -> ImportedCache:
    """What the cache holds. Raises LazybuildError (not found, not a lazybuild cache,
    malformed) for the caller to report."""
    where = f"cache {cache}"
    if cache.ref is not None:
        fetched = await registry.get_manifest(cache.ref)
        manifest_digest, document_of = fetched.digest, fetched.document
        pinned = str(cache.ref.by_digest(fetched.digest))
    else:
        assert cache.src is not None
        manifest_digest, document_of = await trio.to_thread.run_sync(_read_layout, cache.src, where)
        pinned = layout_source(cache.src, manifest_digest)
    manifest = document_of
    if not isinstance(manifest, Manifest) or manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE:
        raise FormatError(f"{where} is not a lazybuild build cache")
    if cache.ref is not None:
        data = await registry.get_blob(
            cache.ref.by_digest(manifest_digest), manifest.config, max_size=MAX_DOCUMENT_BYTES
        )
    else:
        assert cache.src is not None
        data = await trio.to_thread.run_sync(_read_config, cache.src, manifest.config, where)
    document = CacheDocument.decode(data, where)
    held = {layer.digest for layer in manifest.layers}
    missing = [
        layer.descriptor.digest
        for layer in document.layers
        if layer.source is None and layer.descriptor.digest not in held
    ]
    if missing:
        raise FormatError(f"{where} names layer {missing[0]} it does not hold")
    remote = [
        RemoteLayer(layer.descriptor, layer.source or pinned, layer.diff_id)
        if layer.source is not None and not layer.from_cache
        else RemoteLayer(layer.descriptor, layer.source or pinned, layer.diff_id, from_cache=True)
        for layer in document.layers
    ]
    records = {
        entry.key: CacheRecord(Snapshot(tuple(remote[i] for i in entry.layers)).id, entry.created)
        for entry in document.records
    }
    mounts = {
        name: tuple(replace(remote[i], from_cache=True) for i in positions)
        for name, positions in document.mounts.items()
    }
    return ImportedCache(records, dict(document.learned), mounts)


def _read_layout(root: Path, where: str) -> tuple[str, Manifest | Index]:
    """The cache manifest of a layout: its digest and document, verified."""
    layout = OciLayout.open(root)
    descriptor = layout.resolve(LOCAL_CACHE_TAG)
    if descriptor.size > MAX_MANIFEST_SIZE:
        raise FormatError(f"{where}: a {descriptor.size}-byte manifest is too large")
    data = layout.read_blob(descriptor.digest, descriptor.size)
    return descriptor.digest, parse_document(data, descriptor.media_type, where)


def _read_config(root: Path, descriptor: Descriptor, where: str) -> bytes:
    if descriptor.size > MAX_DOCUMENT_BYTES:
        raise FormatError(f"{where}: a {descriptor.size}-byte cache document is too large")
    return OciLayout.open(root).read_blob(descriptor.digest, descriptor.size)


async def import_caches(
    caches: Sequence[CacheImport], registry: RegistryClient, say: Callable[[str], None]
) -> ImportedCache:
    """Every importable cache's records and learned reads, the first listed winning a
    key; a cache that cannot be had is a warning, and the build goes on without it."""
    merged = ImportedCache()
    for cache in caches:
        try:
            imported = await import_cache(cache, registry)
        except LazybuildError as exc:
            say(f"warning: --cache-from {cache}: {' '.join(str(exc).split())}; not used")
            continue
        for key, record in imported.records.items():
            merged.records.setdefault(key, record)
        for key, layers in imported.learned.items():
            merged.learned.setdefault(key, layers)
        for name, mount_layers in imported.mounts.items():
            merged.mounts.setdefault(name, mount_layers)
        say(
            f"imported {len(imported.records)} cache records and what "
            f"{len(imported.learned)} RUN steps read from {cache}"
        )
    return merged
