"""On-disk caches shared by all mounts and runs (content-addressed chunks)."""
