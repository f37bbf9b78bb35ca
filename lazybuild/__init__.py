"""lazybuild: container image builds over lazily pulled eStargz layers."""

__version__ = "0.1.0"
