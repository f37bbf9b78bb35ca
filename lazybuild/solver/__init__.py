"""The solver: runs a build graph with caching, through ops the worker provides.

Pure scheduling and bookkeeping; it never touches a filesystem, runc or a registry. The
worker plugs in with ``resolve_op`` (vertex -> ``Op``) and ``load_result`` (cache record
-> ``Result``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazybuild.lazyexports import lazy_exports

if TYPE_CHECKING:
    from lazybuild.solver.cachekey import DepKey, cache_key
    from lazybuild.solver.cachestore import (
        CacheLink,
        CacheRecord,
        CacheStore,
        MemoryCacheStore,
        SQLiteCacheStore,
    )
    from lazybuild.solver.errors import CacheStoreError, VertexFailedError
    from lazybuild.solver.op import (
        CacheDep,
        CacheMap,
        ContentDigestFunc,
        Job,
        Op,
        PreparesToRun,
        Result,
    )
    from lazybuild.solver.progress import (
        ProgressEvent,
        ProgressSink,
        ProgressWriter,
        VertexCompleted,
        VertexLog,
        VertexStarted,
        VertexStatus,
    )
    from lazybuild.solver.scheduler import LoadResult, ResolveOp, Solver
    from lazybuild.solver.vertex import Edge, Vertex, VertexGraph, load_definition

__getattr__ = lazy_exports(
    __name__,
    {
        "CacheDep": "op",
        "CacheLink": "cachestore",
        "CacheMap": "op",
        "CacheRecord": "cachestore",
        "CacheStore": "cachestore",
        "CacheStoreError": "errors",
        "ContentDigestFunc": "op",
        "DepKey": "cachekey",
        "Edge": "vertex",
        "Job": "op",
        "LoadResult": "scheduler",
        "MemoryCacheStore": "cachestore",
        "Op": "op",
        "PreparesToRun": "op",
        "ProgressEvent": "progress",
        "ProgressSink": "progress",
        "ProgressWriter": "progress",
        "ResolveOp": "scheduler",
        "Result": "op",
        "SQLiteCacheStore": "cachestore",
        "Solver": "scheduler",
        "Vertex": "vertex",
        "VertexCompleted": "progress",
        "VertexFailedError": "errors",
        "VertexGraph": "vertex",
        "VertexLog": "progress",
        "VertexStarted": "progress",
        "VertexStatus": "progress",
        "cache_key": "cachekey",
        "load_definition": "vertex",
    },
)

__all__ = [
    "CacheDep",
    "CacheLink",
    "CacheMap",
    "CacheRecord",
    "CacheStore",
    "CacheStoreError",
    "ContentDigestFunc",
    "DepKey",
    "Edge",
    "Job",
    "LoadResult",
    "MemoryCacheStore",
    "Op",
    "PreparesToRun",
    "ProgressEvent",
    "ProgressSink",
    "ProgressWriter",
    "ResolveOp",
    "Result",
    "SQLiteCacheStore",
    "Solver",
    "Vertex",
    "VertexCompleted",
    "VertexFailedError",
    "VertexGraph",
    "VertexLog",
    "VertexStarted",
    "VertexStatus",
    "cache_key",
    "load_definition",
]
