"""Image commands and the stores they read and write: ``store`` (``ImageSource`` /
``ImageTarget`` over registries and OCI layouts), ``layerprobe`` (what a layer blob is),
``inspect``, ``convert`` (image -> eStargz image) and ``optimize`` (a workload's files
first, its workload run by ``sourceworkload``); what rewriting commands share:
``layerrewrite`` (one layer as eStargz, or kept) and ``manifestrewrite`` (config with
new diff_ids, manifest, index).

Import from the modules: this package imports nothing.
"""
