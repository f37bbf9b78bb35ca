"""The daemon's gRPC API: ``.proto`` files and the Python generated from them
(``just proto``; checked in, kept in sync by ``tests/unit/daemon/test_proto_sync.py``)."""
