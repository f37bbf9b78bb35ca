"""Argument types and the global options every command shares."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lazybuild.registry.options import RegistryOptions
from lazybuild.state.statedir import default_state_dir

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(text: str) -> int:
    """A byte count: ``4194304``, ``4MiB``, ``10GB`` (binary units either way)."""
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = _UNITS.get(lowered[-1:], 1)
    digits = lowered[:-1] if lowered[-1:] in _UNITS else lowered
    try:
        value = int(digits) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4194304, 4MiB)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_size(text: str) -> int:
    value = size(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def compression_level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= 9:
        raise argparse.ArgumentTypeError("compression level must be between 1 and 9")
    return value


def add_layer_writer_options(parser: argparse.ArgumentParser) -> None:
    """How a command that rewrites layers (convert, optimize) writes its eStargz blobs."""
    parser.add_argument(
        "--chunk-size",
        type=positive_size,
        default=4 << 20,
        metavar="SIZE",
        help="eStargz chunk size (default 4MiB)",
    )
    parser.add_argument(
        "--compression-level",
        type=compression_level,
        metavar="N",
        help="gzip level 1-9 (default 6)",
    )
    parser.add_argument(
        "--tmpdir", type=Path, metavar="DIR", help="directory for temporary layer files"
    )


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (loopback registries always are)",
    )
    parser.add_argument(
        "--docker-config",
        type=Path,
        metavar="FILE",
        help="docker config.json with registry credentials (default: $DOCKER_CONFIG or ~/.docker)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="chunk cache, TOCs, unpacked layers and mount records "
        "(default: $LAZYBUILD_STATE_DIR or /var/lib/lazybuild)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    from_env = os.environ.get("LAZYBUILD_INSECURE_REGISTRIES", "")
    insecure = [*args.insecure_registry, *(h.strip() for h in from_env.split(",") if h.strip())]
    return RegistryOptions(tuple(insecure), args.docker_config)


def state_dir(args: argparse.Namespace) -> Path:
    chosen: Path = args.state_dir or default_state_dir()
    return chosen
