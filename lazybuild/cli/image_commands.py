"""``inspect`` and ``convert``: images as they are stored."""

from __future__ import annotations

import argparse
import json

from lazybuild.cli.options import add_layer_writer_options, registry_options
from lazybuild.oci.platform import Platform


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = commands.add_parser("inspect", help="show an image's manifests and layer formats")
    inspect.add_argument("image", metavar="IMAGE", help="registry reference or oci:DIR[:tag]")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(run=run_inspect)

    convert = commands.add_parser("convert", help="convert an image's layers to eStargz")
    convert.add_argument("source", metavar="SOURCE", help="registry reference or oci:DIR[:tag]")
    convert.add_argument(
        "destination", metavar="DESTINATION", help="registry reference or oci:DIR[:tag]"
    )
    convert.add_argument(
        "--platform", metavar="OS/ARCH", help="convert only this platform of an index"
    )
    add_layer_writer_options(convert)
    convert.set_defaults(run=run_convert)


async def run_inspect(args: argparse.Namespace) -> int:
    from lazybuild.image.inspect import inspect_image
    from lazybuild.image.store import open_source

    registry = registry_options(args)
    async with registry.client() as client:
        report = await inspect_image(open_source(args.image, client))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    return 0


async def run_convert(args: argparse.Namespace) -> int:
    from lazybuild.image.convert import ConvertOptions, convert_image
    from lazybuild.image.store import open_source, open_target
    from lazybuild.progress.lines import Progress, human_size
    from lazybuild.progress.transfer import reporting, terminal_view

    progress = Progress(quiet=args.quiet)
    options = ConvertOptions(
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        platform=Platform.parse(args.platform) if args.platform else None,
        tmpdir=args.tmpdir,
    )
    registry = registry_options(args)
    # Downloads and uploads show bytes, rate and ETA on a terminal (nothing elsewhere).
    with reporting(terminal_view(quiet=args.quiet)):
        async with registry.client() as client:
            source = open_source(args.source, client)
            target = open_target(args.destination, client, source)
            progress.line(f"converting {source.description} -> {target.description}")
            result = await convert_image(source, target, options, progress)
    converted = [o for o in result.layers if o.converted]
    before = sum(o.source.size for o in converted)
    after = sum(o.result.size for o in converted)
    progress.line(
        f"done: {len(converted)} layer(s) converted ({human_size(before)} -> {human_size(after)}),"
        f" {len(result.layers) - len(converted)} kept"
    )
    print(result.root.digest)
    return 0
