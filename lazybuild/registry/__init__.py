"""OCI registry client built for lazy reads (Range requests) on trio."""

from lazybuild.registry.blob import FetchStats, RemoteBlob
from lazybuild.registry.client import FetchedManifest, RegistryClient, ResolvedImage
from lazybuild.registry.reference import Reference

__all__ = [
    "FetchStats",
    "FetchedManifest",
    "Reference",
    "RegistryClient",
    "RemoteBlob",
    "ResolvedImage",
]
