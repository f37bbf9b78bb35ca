"""``lazybuild build``: Dockerfile and context in, image out.

``request`` says what to build; ``graphing`` turns the Dockerfile into a build graph
(resolving base images for their configs); ``driver`` runs the graph with the solver
and the worker, then hands the result to the exporter.
"""
