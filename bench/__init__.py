"""Benchmarks of lazybuild against peers measured in the same run (`python -m bench`)."""
