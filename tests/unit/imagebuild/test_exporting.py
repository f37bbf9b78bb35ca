"""The export half both the CLI and the daemon run: a build without outputs says so
once, before it starts, wherever it runs."""

from __future__ import annotations

from lazybuild.exporter.outputs import ImageOutput
from lazybuild.imagebuild.exporting import ExportPlan, exporting_finish
from lazybuild.imagebuild.profiling import ProfileRequest
from lazybuild.registry.options import RegistryOptions


def _plan(outputs: tuple[ImageOutput, ...]) -> ExportPlan:
    return ExportPlan(
        outputs,
        (),
        ProfileRequest(),
        profile_workload=False,
        source_date_epoch=None,
        assemble=False,
        registry=RegistryOptions(),
    )


def test_a_build_without_outputs_says_so_before_it_starts() -> None:
    lines: list[str] = []
    exporting_finish(_plan(()), lines.append, [])
    assert lines == [
        "no output specified: the result stays in the build cache (use -o, --push or --load)"
    ]


def test_a_build_with_an_output_says_nothing_yet() -> None:
    lines: list[str] = []
    exporting_finish(_plan((ImageOutput(("r.example/app:1",), push=True),)), lines.append, [])
    assert lines == []
