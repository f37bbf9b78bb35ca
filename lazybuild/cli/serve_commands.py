"""``lazybuild serve``: the build daemon (lazybuild/daemon, docs/daemon.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lazybuild.cli.options import registry_options


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", help="run the build daemon, serving its gRPC API (see docs/daemon.md)"
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML configuration (default: none)"
    )
    serve.add_argument(
        "--addr",
        action="append",
        metavar="ADDR",
        help="listen on unix:///PATH or tcp://HOST:PORT (repeatable; replaces the "
        "configuration's addresses; default unix:///run/lazybuild/lazybuild.sock)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate (TCP)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (TCP)")
    serve.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="CA that client certificates must chain to"
    )
    serve.add_argument(
        "--socket-group", metavar="GROUP", help="the group that may use the unix socket"
    )
    serve.set_defaults(run=run_serve)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as configuration keys (absent ones leave the file's values)."""
    tls = {
        key: value
        for key, value in (("cert", args.tls_cert), ("key", args.tls_key), ("ca", args.tls_ca))
        if value is not None
    }
    # The global registry flags, with $LAZYBUILD_INSECURE_REGISTRIES, as every command
    # reads them.
    registry = registry_options(args)
    return {
        "addresses": args.addr,
        "state_dir": args.state_dir,
        "insecure_registries": registry.insecure_registries or None,
        "docker_config": registry.docker_config,
        "socket_group": args.socket_group,
        "tls": tls or None,
    }


async def run_serve(args: argparse.Namespace) -> int:
    from lazybuild.daemon.config import load_config
    from lazybuild.daemon.server import serve

    config = load_config(args.config, _overrides(args))
    return await serve(config)
