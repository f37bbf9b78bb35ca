"""OCI registry client built for lazy reads (Range requests) on trio.

Import from the modules (``registry.client``, ``registry.reference``, ...): this
package imports nothing, so that naming an image (``Reference``) does not load the
HTTP client, which a command's filesystem process is forked without (see
``lazyfs.forkedservice``).
"""
