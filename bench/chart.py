"""Charts for benchmark sections: PNG files next to docs/benchmarks.md (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# One colour per phase, in stacking order (bottom first); the stargz-snapshotter
# HelloBench charts use pull / create / run in this order too.
PHASE_COLOURS = {"pull": "#4c72b0", "create": "#dd8452", "run": "#55a868"}


@dataclass(frozen=True)
class Bar:
    label: str  # the mode, under the bar (may contain "\n")
    phases: dict[str, float]  # phase -> seconds; missing phases count as 0
    note: str = ""  # above the bar, after the total (e.g. "0.42x gzip")
    failed: bool = False
    hatch: str | None = None  # e.g. "//" for a reference bar


@dataclass(frozen=True)
class Panel:
    title: str
    bars: Sequence[Bar]


def matplotlib_missing() -> str | None:
    """Why no chart can be drawn, or None when matplotlib is importable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (it is in the `dev` extras)"
    return None


def stacked_bars(
    path: Path,
    panels: Sequence[Panel],
    *,
    title: str,
    phases: Sequence[str] = ("pull", "create", "run"),
    ylabel: str = "seconds",
) -> None:
    """Side-by-side panels of stacked bars (one bar per mode, one stack per phase), with
    each bar's total and note written above it; written to `path` as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widest = max(len(panel.bars) for panel in panels)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(1.0 + 2.0 * widest * len(panels), 4.8), squeeze=False
    )
    top = max(
        (sum(bar.phases.values()) for panel in panels for bar in panel.bars if not bar.failed),
        default=1.0,
    )
    for axis, panel in zip(axes[0], panels, strict=True):
        positions = range(len(panel.bars))
        bottoms = [0.0] * len(panel.bars)
        for phase in phases:
            heights = [0.0 if bar.failed else bar.phases.get(phase, 0.0) for bar in panel.bars]
            drawn = axis.bar(
                positions,
                heights,
                bottom=bottoms,
                width=0.6,
                color=PHASE_COLOURS.get(phase),
                label=phase,
                edgecolor="white",
                linewidth=0.5,
            )
            for patch, bar in zip(drawn.patches, panel.bars, strict=True):
                if bar.hatch:
                    patch.set_hatch(bar.hatch)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        for position, bar, height in zip(positions, panel.bars, bottoms, strict=True):
            text = "failed" if bar.failed else f"{height:.1f} s"
            if bar.note and not bar.failed:
                text += f"\n{bar.note}"
            axis.annotate(
                text,
                (position, height),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axis.set_xticks(list(positions), [bar.label for bar in panel.bars], fontsize=8)
        axis.set_title(panel.title, fontsize=10)
        axis.set_ylim(0, top * 1.25)
        axis.set_ylabel(ylabel)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    axes[0][0].legend(loc="upper right", fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
