"""The ``lazybuild`` command line."""
