"""The examples each command's ``--help`` ends with.

Kept apart from the flags so a command family's module stays about what its flags do;
``main.build_parser`` attaches them. A command without examples fails a unit test.
"""

from __future__ import annotations

import argparse

__all__ = ["EXAMPLES", "add_examples"]

EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "lazybuild": (
        ("build and push an image", "lazybuild build -t registry.example/app:1 --push ."),
        (
            "run an image, pulling only what it reads",
            "lazybuild run debian:bookworm cat /etc/os-release",
        ),
        (
            "convert an image's layers to eStargz",
            "lazybuild convert debian:bookworm registry.example/debian:esgz",
        ),
    ),
    "build": (
        ("build ./ and push it", "lazybuild build -t registry.example/app:1 --push ."),
        (
            "one stage, with a build arg, into an OCI tarball",
            "lazybuild build --target test --build-arg GO_VERSION=1.22 -o type=oci,dest=app.tar .",
        ),
        ("only evaluate the Dockerfile's build checks", "lazybuild build --check ."),
    ),
    "inspect": (
        ("manifests, platforms and layer formats", "lazybuild inspect debian:bookworm"),
        ("an OCI layout, as JSON", "lazybuild inspect --json oci:./image:latest"),
    ),
    "convert": (
        ("registry to registry", "lazybuild convert debian:bookworm registry.example/debian:esgz"),
        (
            "one platform into an OCI layout",
            "lazybuild convert --platform linux/amd64 python:3.12 oci:./python-esgz:3.12",
        ),
    ),
    "optimize": (
        (
            "record the image's own command, write an optimized copy",
            "lazybuild optimize registry.example/app:1 registry.example/app:1-opt",
        ),
        (
            "a server: stop when it says it is ready",
            "lazybuild optimize --workload-ready 'listening on' app:1 oci:./app-opt",
        ),
        (
            "reuse a record instead of running anything",
            "lazybuild optimize --record-in record.json app:1 app:1-opt",
        ),
    ),
    "mount": (
        ("browse an image's files until Ctrl-C", "lazybuild mount debian:bookworm /mnt/debian"),
        ("writable, from an OCI layout", "lazybuild mount --upper /tmp/up oci:./image /mnt/image"),
    ),
    "umount": (
        ("undo a `lazybuild mount`", "lazybuild umount /mnt/debian"),
        ("the same, without progress lines", "lazybuild -q umount /mnt/debian"),
    ),
    "run": (
        ("the image's command, like docker run --rm", "lazybuild run registry.example/app:1"),
        (
            "a command of your own, with a variable",
            "lazybuild run -e DEBUG=1 -w /tmp debian:bookworm ls -l",
        ),
        ("an image in an OCI layout", "lazybuild run oci:./image:latest true"),
    ),
    "du": (
        ("this machine's caches", "lazybuild du"),
        ("a build daemon's", "lazybuild du --builder unix:///run/lazybuild/lazybuild.sock"),
    ),
    "prune": (
        ("remove every cached chunk", "lazybuild prune"),
        ("keep the most recently used 2 GiB", "lazybuild prune --keep-storage 2GiB"),
    ),
    "serve": (
        ("on the default unix socket", "lazybuild serve"),
        (
            "on TCP with mutual TLS",
            "lazybuild serve --addr tcp://0.0.0.0:1234 --tls-cert server.pem --tls-key "
            "server-key.pem --tls-ca ca.pem",
        ),
    ),
}


def _epilog(examples: tuple[tuple[str, str], ...]) -> str:
    lines = ["examples:"]
    for what, command in examples:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines)


class _ExamplesFormatter(argparse.HelpFormatter):
    """argparse's formatter, but the examples keep their lines (descriptions are wrapped
    as before)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_examples(
    parser: argparse.ArgumentParser, commands: argparse._SubParsersAction[argparse.ArgumentParser]
) -> None:
    """Each parser's epilog, kept as written."""
    for name, command in [("lazybuild", parser), *commands.choices.items()]:
        examples = EXAMPLES.get(name)
        if examples is None:
            continue
        command.epilog = _epilog(examples)
        command.formatter_class = _ExamplesFormatter
