"""Write a ``dataset.json`` for COVID-SemiSeg (chest CT lung infection, Inf-Net / Semi-Inf-Net, IEEE TMI 2020).

40 of the 50 labeled slices train and 10, drawn with a fixed seed, validate (the slice names carry no patient, so
no split by patient is possible; :mod:`vqseg_bundle.data.covid_semiseg` says why and what it costs); the 1600
unlabeled slices are "unlabeled"; the 48 test slices and their masks are "test", scored only for the final report.
Nothing is copied: the entries point at the source files.

Examples (from the bundle root):
    python scripts/prepare_covid_semiseg.py                                   # ../shared/data/covid_semiseg
    python scripts/prepare_covid_semiseg.py --output outputs/covid_semiseg_3class --multiclass true
    python -m monai.bundle run training --config_file configs/train.yaml --dataset_dir outputs/covid_semiseg \\
        --labeled all --num_classes 2 --class_names "['infection']" --label_mapping "{0: 0, 255: 1}"
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a plain checkout

from vqseg_bundle.benchmarks.commands import as_flag  # noqa: E402
from vqseg_bundle.data.covid_semiseg import prepare_covid_semiseg  # noqa: E402

DEFAULT_SOURCE = str(REPO.parent / "shared" / "data" / "covid_semiseg")


def main(
    source: str = DEFAULT_SOURCE,
    output: str = "outputs/covid_semiseg",
    multiclass: bool = False,
    val_count: int = 10,
    seed: int = 0,
) -> None:
    """Write ``output/dataset.json`` from the COVID-SemiSeg folder ``source`` (binary task; ``--multiclass true``:
    the 3-class one); ``val_count`` labeled slices drawn for validation with ``seed``."""
    multiclass = as_flag(multiclass, "multiclass")
    out = Path(output) if Path(output).is_absolute() else REPO / output
    path = prepare_covid_semiseg(source, out, multiclass=multiclass, val_count=val_count, seed=seed)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
