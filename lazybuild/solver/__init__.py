"""The solver: runs a build graph with caching, through ops the worker provides.

Pure scheduling and bookkeeping; it never touches a filesystem, runc or a registry. The
worker plugs in with ``resolve_op`` (vertex -> ``Op``) and ``load_result`` (cache record
-> ``Result``).
"""

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
