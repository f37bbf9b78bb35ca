"""Running an image: ``imagemount`` (an image's root filesystem, every layer mounted
lazily through the filesystem process), ``settings`` (an image config plus command-line
overrides -> process settings, by Docker's rules), ``container`` (``lazybuild run``).

Import from the modules: this package imports nothing, so that ``settings`` stays light
for the gateway and the profiler.
"""
