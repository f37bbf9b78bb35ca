"""`python -m bench [names...]`: run benchmarks, rewrite their sections of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import build, ciday, convert, hotreads, optimized, rebuild, secondrunner, startup
from bench.infra import BenchInfra
from bench.report import Section, write_section

BENCHMARKS: dict[str, Callable[[BenchInfra, int, bool], Section]] = {
    "convert": lambda infra, repeat, wan: convert.run(infra, repeat=repeat, wan=wan),
    "startup": lambda infra, repeat, wan: startup.run(infra, repeat=repeat, wan=wan),
    "hotreads": lambda infra, repeat, wan: hotreads.run(infra, repeat=repeat, wan=wan),
    "build": lambda infra, repeat, wan: build.run(infra, repeat=repeat, wan=wan),
    "optimized": lambda infra, repeat, wan: optimized.run(infra, repeat=repeat, wan=wan),
    "rebuild": lambda infra, repeat, wan: rebuild.run(infra, repeat=repeat, wan=wan),
    "secondrunner": lambda infra, repeat, wan: secondrunner.run(infra, repeat=repeat, wan=wan),
    "ciday": lambda infra, repeat, wan: ciday.run(infra, repeat=repeat, wan=wan),
}

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (all: {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--no-wan", action="store_true", help="skip the emulated WAN link runs")
    parser.add_argument("--output", type=Path, default=REPORT, help="markdown file to update")
    args = parser.parse_args(argv)

    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    failed = False
    with BenchInfra() as infra:
        for name in names:
            started = time.monotonic()
            print(f"bench {name}: running", file=sys.stderr, flush=True)
            try:
                section = BENCHMARKS[name](infra, args.repeat, not args.no_wan)
            except Exception:
                # Infrastructure trouble: say so and leave the previous results in place.
                traceback.print_exc()
                print(f"bench {name}: FAILED, {args.output} not changed", file=sys.stderr)
                failed = True
                continue
            write_section(args.output, section)
            elapsed = time.monotonic() - started
            print(f"bench {name}: done in {elapsed:.0f} s -> {args.output}", file=sys.stderr)
            print(section.markdown())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
