"""A build on a big builder image fetches only what its steps read, counted on the wire.

The builder has gcc, Go and a JRE on Debian: over 250 MB of compressed eStargz layers.
The build compiles a C program with it and ships the binary on scratch.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.cache import cached_dir
from tests.support.imagebuild import cached_toolchain_image
from tests.support.images import read_layout_image
from tests.support.push import push_oci_layout
from tests.support.registry import Registry
from tests.support.rootfs import GCC_PACKAGES, GOLANG_PACKAGES, JRE_PACKAGES, debootstrap_rootfs
from tests.support.wanproxy import WanProxy

MIN_BUILDER_BYTES = 250_000_000
MAX_FETCHED_SHARE = 0.20

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello, static world"); return 0; }\n'

DOCKERFILE = """\
ARG BUILDER
FROM ${BUILDER} AS build
WORKDIR /src
COPY hello.c .
RUN gcc -O2 -static -o hello hello.c && ./hello

FROM scratch
COPY --from=build /src/hello /hello
ENTRYPOINT ["/hello"]
"""


def _estargz_layout(source: Path) -> Path:
    def convert(scratch: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "lazybuild", "-q", "convert", f"oci:{source}", f"oci:{scratch}"],
            check=True,
        )

    return cached_dir(f"{source.name}-estargz-v1", convert)


@pytest.fixture(scope="module")
def builder_layout() -> Path:
    base = debootstrap_rootfs("minbase", [])
    toolchains = [
        debootstrap_rootfs("minbase", packages)
        for packages in (GCC_PACKAGES, GOLANG_PACKAGES, JRE_PACKAGES)
    ]
    return _estargz_layout(cached_toolchain_image(base, toolchains))


@pytest.fixture(scope="module")
def counted_builder(registry: Registry, builder_layout: Path) -> Iterator[tuple[str, WanProxy]]:
    push_oci_layout(builder_layout, registry.host, "e2e-lazy/toolchains", "esgz")
    proxy = WanProxy.counting(registry.host).start()
    try:
        yield f"{proxy.host}/e2e-lazy/toolchains:esgz", proxy
    finally:
        proxy.stop()


def test_build_fetches_a_small_share_of_a_big_builder(
    counted_builder: tuple[str, WanProxy], builder_layout: Path, tmp_path: Path
) -> None:
    builder, proxy = counted_builder
    compressed = sum(layer["size"] for layer in read_layout_image(builder_layout).layers)
    assert compressed >= MIN_BUILDER_BYTES
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"hello.c": HELLO_C})
    out = tmp_path / "out"
    proxy.reset_counters()
    result = lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BUILDER={builder}",
        "-o",
        f"type=local,dest={out}",
        str(context),
    )
    fetched = proxy.bytes_to_client
    assert "hello, static world" in result.stderr
    assert (out / "hello").stat().st_size > 0
    print(f"fetched {fetched} of {compressed} bytes ({fetched / compressed:.1%})")
    assert fetched <= MAX_FETCHED_SHARE * compressed, (
        f"fetched {fetched} bytes of a {compressed}-byte builder"
    )
    assert_nothing_left(state)
