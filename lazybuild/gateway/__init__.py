"""The gateway between build frontends and the build (see ``docs/frontends.md``).

This package's top level is the contract a frontend programs against; it imports only
``lazybuild.graph``. The build's side (``bridge``, ``selection``, ``running``,
``dockerfile``) lives in its submodules and is imported by the build driver alone.
"""

from lazybuild.gateway.contract import (
    MAX_CONFIG_BYTES,
    MAX_DIR_ENTRIES,
    MAX_READ_BYTES,
    DirEntry,
    Frontend,
    FrontendError,
    FrontendInputs,
    FrontendResult,
    Gateway,
    GatewayError,
    Ref,
    ResolvedConfig,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DIR_ENTRIES",
    "MAX_READ_BYTES",
    "DirEntry",
    "Frontend",
    "FrontendError",
    "FrontendInputs",
    "FrontendResult",
    "Gateway",
    "GatewayError",
    "Ref",
    "ResolvedConfig",
]
