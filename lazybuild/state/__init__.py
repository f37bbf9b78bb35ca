"""What lazybuild keeps on the host, and how: ``statedir`` (where state lives),
``atomicfile`` (files replaced whole by rename), ``processes`` (``ProcessId``: whose
leftovers are whose, even after a pid is reused).

Import from the modules: this package imports nothing.
"""
