"""Workload profiles: run an image's workload, record the files it reads in order, and
say which layer serves each, so layers can be written with those files first.

- ``workload.record_workload``: run the workload in runc over an overlay mount and
  record its file accesses (``fanotify``, a filesystem mark on the overlay);
- ``layers.assign_to_layers``: recorded paths -> the top-most layer that has each;
- ``record``: the record file (ctr-remote's ``--record-out`` format);
- ``artifact``: the record as a small artifact in the image's index;
- ``published``: a run's use of the record published with the image.

Import from the modules: this package imports nothing, so that a run, which needs only
``published``, does not load the workload runner.
"""
