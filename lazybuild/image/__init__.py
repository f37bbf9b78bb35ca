"""Image commands and the stores they read and write: ``store`` (``ImageSource`` /
``ImageTarget`` over registries and OCI layouts), ``layerprobe`` (what a layer blob is),
``inspect``, ``convert`` (image -> eStargz image) and ``optimize`` (a workload's files
first).

Import from the modules: this package imports nothing.
"""
