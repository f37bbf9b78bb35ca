"""Progress on stderr: ``lines`` (plain progress lines for the image commands),
``modes`` (the ``--progress`` values, light to import), ``buildview`` (a build's display
over the solver's events).

Import from the modules: this package imports nothing.
"""
