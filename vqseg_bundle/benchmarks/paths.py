"""Where the benchmark reads and writes: the bundle root and the default locations beside it."""

from __future__ import annotations

from pathlib import Path

#: the bundle root (the folder that holds ``configs/`` and ``scripts/``)
REPO = Path(__file__).resolve().parents[2]
#: the benchmark specifications (protocols and variants)
SPEC_DIR = REPO / "configs" / "benchmarks"
#: ``../shared/data/acdc`` beside the repository (the layout of the CI machine)
DEFAULT_DATASET_DIR = str(REPO.parent / "shared" / "data" / "acdc")
#: the UniMatch peer's own learning curves (``../shared/peers/results``)
PEER_RESULTS = REPO.parent / "shared" / "peers" / "results"


def resolve(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the bundle root."""
    path = Path(path)
    return path if path.is_absolute() else (REPO / path)


def relative(path: Path) -> str:
    """``path`` relative to the bundle root when it lies below it, else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def labeled_dirs(protocol_dir: Path) -> list[Path]:
    """The ``labeled<N>`` folders of a protocol's results (``<results_dir>/acdc_<protocol>/``), by N."""
    return sorted(protocol_dir.glob("labeled*"), key=lambda p: int(p.name[len("labeled") :] or 0))
