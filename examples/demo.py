"""`just demo`: lazybuild's main job on a built-in example, on a fresh machine.

It starts a local registry, makes a gcc builder image and a slim C runtime image from
Debian packages with debootstrap (cached after the first run), pushes both as ordinary
gzip images and converts them to eStargz with `lazybuild convert`. Then it builds
`examples/hello-c` (compile in the builder, copy the binary onto the runtime) with
`lazybuild build`: the builder is mounted lazily, so only what gcc reads is fetched. The
result is pushed as eStargz, run with `lazybuild run`, and the fetch report shows how
little of the builder the build needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lazybuild.progress.lines import human_size
from tests.support.imagebuild import cached_builder_image, cached_runtime_image
from tests.support.push import push_oci_layout
from tests.support.registry import Registry
from tests.support.rootfs import GCC_PACKAGES, debootstrap_rootfs

EXAMPLE = Path(__file__).resolve().parent / "hello-c"


def lazybuild(*args: str) -> None:
    print(f"\n$ lazybuild {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "lazybuild", *args], check=True)


def main() -> None:
    print("making a gcc builder and a C runtime image with debootstrap (cached after a first run)")
    base = debootstrap_rootfs("minbase", [])
    builder_layout = cached_builder_image(base, debootstrap_rootfs("minbase", GCC_PACKAGES))
    runtime_layout = cached_runtime_image(base)
    with tempfile.TemporaryDirectory(prefix="lazybuild-demo-") as tmp, Registry(Path(tmp)) as reg:
        state = f"{tmp}/state"
        images = {}
        for name, layout in (("gcc", builder_layout), ("runtime", runtime_layout)):
            push_oci_layout(layout, reg.host, f"demo/{name}", "gzip")
            images[name] = f"{reg.host}/demo/{name}:bookworm"
            lazybuild("-q", "convert", f"{reg.host}/demo/{name}:gzip", images[name])
            print(f"  {images[name]}: eStargz")
        lazybuild("inspect", images["gcc"])
        result = f"{reg.host}/demo/hello:latest"
        report = Path(tmp) / "fetch-report.json"
        lazybuild(
            "--state-dir",
            state,
            "build",
            "--progress=plain",
            "--build-arg",
            f"BUILDER={images['gcc']}",
            "--build-arg",
            f"RUNTIME={images['runtime']}",
            "-t",
            result,
            "--push",
            "--fetch-report",
            str(report),
            str(EXAMPLE),
        )
        layers = json.loads(report.read_text())["layers"]
        fetched = sum(layer["bytes_fetched"] for layer in layers)
        size = sum(layer["size"] for layer in layers)
        print(
            f"\nthe build fetched {human_size(fetched)} of the {human_size(size)} its base "
            f"images weigh ({fetched / size:.1%})"
            if size
            else ""
        )
        lazybuild("--state-dir", state, "run", result)


if __name__ == "__main__":
    main()
