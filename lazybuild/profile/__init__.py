"""Workload profiles: run an image's workload, record the files it reads in order, and
say which layer serves each, so layers can be written with those files first.

- ``workload.record_workload``: run the workload in runc over an overlay mount and
  record its file accesses (``fanotify``, a filesystem mark on the overlay);
- ``recording``: a workload's reads for a rewrite (build profiling and ``optimize``):
  recorded, with the lazy filesystem's places read of big files, or from a record file;
- ``layers.assign_to_layers``: recorded paths -> the top-most layer that has each;
  ``layers.plan_layers``: that, and each layer's files cut to a prefetch region;
- ``record``: the record file (ctr-remote's ``--record-out`` format);
- ``artifact``: the record as a small artifact in the image's index;
- ``published``: a run's use of the record published with the image.

Import from the modules: this package imports nothing, so that a run, which needs only
``published``, does not load the workload runner.
"""
