"""Workload profiles: run an image's workload, record the files it reads in order, and
say which layer serves each, so layers can be written with those files first.

- ``workload.record_workload``: run the workload in runc over an overlay mount and
  record its file accesses (``fanotify``, a filesystem mark on the overlay);
- ``layers.assign_to_layers``: recorded paths -> the top-most layer that has each;
- ``record``: the record file (ctr-remote's ``--record-out`` format);
- ``artifact``: the record as a small artifact in the image's index.
"""

from lazybuild.profile.layers import (
    DirectoryLayerContents,
    LayerAssignment,
    LayerContents,
    TarLayerContents,
    assign_to_layers,
)
from lazybuild.profile.record import RecordEntry, decode_record, encode_record, read_record
from lazybuild.profile.workload import (
    DEFAULT_TIMEOUT,
    ProfileError,
    WorkloadOutcome,
    WorkloadRecord,
    record_workload,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DirectoryLayerContents",
    "LayerAssignment",
    "LayerContents",
    "ProfileError",
    "RecordEntry",
    "TarLayerContents",
    "WorkloadOutcome",
    "WorkloadRecord",
    "assign_to_layers",
    "decode_record",
    "encode_record",
    "read_record",
    "record_workload",
]
