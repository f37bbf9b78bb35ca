"""The build cache shared through a registry: what a build's steps produced, exported
as an OCI artifact of eStargz layers (``--cache-to``) and imported by other machines
(``--cache-from``), whose hits are mounted lazily like a base image, never downloaded.

- ``spec``: the ``--cache-to``/``--cache-from`` values, as buildx spells them.
- ``document``: the cache artifact's config, the records (cache key -> layers), strictly
  decoded: a cache is input from a registry like any other.
- ``records``: which keys a build touched (``ObservedCacheStore``), which of them an
  export takes (``mode=min|max``), and imported records consulted after the local ones
  (``ImportedCacheStore``).
- ``registrycache``: pushing and fetching the artifact.

The format is described in docs/remote-cache.md.
"""
