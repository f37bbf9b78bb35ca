"""OCI and Docker image models: media types, descriptors, manifests, indexes, layouts."""
