"""Test and benchmark support: real daemons from Debian packages, started on loopback.

procs       start / wait-ready / stop child daemons, mount and process cleanup
registry    docker-registry 2.8 (open, or token auth), write_docker_config
tokenserver the token realm (Basic credentials -> RS256 JWT) for the token registry
cache       build-once, lock-protected, atomically renamed cache directories
rootfs      debootstrap root filesystems, cached
imagebuild  docker-style plain-gzip OCI images from directories, whiteout layers
push        pushing an OCI layout's image to a registry with plain HTTP calls
containerd  a private containerd with ctr / ctr-remote helpers
dockerd     a private dockerd 20.10 with a docker CLI helper
wanproxy    a TCP proxy emulating latency and bandwidth, counting bytes
"""
