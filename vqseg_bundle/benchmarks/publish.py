"""Writing the benchmarks' results into the docs: a marked section of a Markdown file, a figure as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the markers of the ACDC benchmark's section of docs/results.md (the default section)
MARK_START = "<!-- acdc-benchmark:start -->"
MARK_END = "<!-- acdc-benchmark:end -->"


def write_section(
    docs_file: Path, body: str, start: str = MARK_START, end: str = MARK_END, heading: str = "ACDC benchmark"
) -> None:
    """Replace the text between the ``start`` / ``end`` markers of ``docs_file`` (added under ``## heading`` at the
    end when missing)."""
    text = docs_file.read_text() if docs_file.exists() else "# Measured results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + start + "\n" + body + end + tail
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + start + "\n" + body + end + "\n"
    docs_file.parent.mkdir(parents=True, exist_ok=True)
    docs_file.write_text(text)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, axes: Sequence[Any], path: Path, dpi: int = 80) -> None:
    """Grid and legend on every axis, then the PNG (``dpi``) at ``path``."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
