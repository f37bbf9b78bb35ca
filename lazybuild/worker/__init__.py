"""The worker: the build graph's operations done for real, on layers and snapshots.

``layers`` defines what a build result is (a stack of layers); ``layerstore`` keeps the
layers a build made; ``rootfs`` stacks a snapshot into a mounted root filesystem; the
``*op`` modules implement the solver's ``Op`` for each graph operation.
"""
