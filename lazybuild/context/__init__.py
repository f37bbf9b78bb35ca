"""The build context: ``sources`` (a context from stdin, a tar or a git URL made a
directory), ``dockerignore`` (Docker's exclusion rules), ``listing`` (the context's files
and the content keys of COPY selectors).

Import from the modules: this package imports nothing.
"""
