"""One trained model on the validation volumes in each of the 8 in-plane dihedral orientations (4 quarter turns x mirror).

The bundle's evaluation (``configs/train.yaml`` + ``configs/evaluate.yaml``, with the settings of the benchmark run's
recorded evaluation command) is built once and run 8 times, image and label of every validation volume turned /
mirrored together (:mod:`vqseg_bundle.benchmarks.dihedral`). Prints and writes the mean Dice per transform, the
worst drop from the identity and the inference time per volume (the inferer alone, identity orientation).

Examples:
    python scripts/benchmark_dihedral.py          # the bundle's own models/model.pt on its validation data
    python scripts/benchmark_dihedral.py --run_json results/acdc_cpu_peer_dihedral/labeled3/unimatch/run.json
    python scripts/benchmark_dihedral.py --run_json results/acdc_cpu_peer_dihedral/labeled3/unimatch/run.json \
        --tta dihedral
    python scripts/benchmark_dihedral.py --run_json "['A/run.json','B/run.json']"   # several models, one table
    python scripts/benchmark_dihedral.py --run_json results/acdc_cpu_peer/labeled3/unimatch/run.json \
        --orientation_classifier outputs/orientation/acdc64/orientation.pt   # with orientation correction

The model is the run's ``model.pt`` (``--ckpt_path`` from its evaluation command) unless ``--ckpt_path`` is given
(one run only); without ``--run_json``, the bundle's ``models/model.pt`` evaluated as ``configs/evaluate.yaml`` does
(``eval/orientation/bundle__model.json``). Orientation correction (configs/evaluate.yaml) is used as the evaluation
configures it (``orientation_correction: auto``: the classifier beside the model, when there is one) unless
``--orientation_classifier`` names one (``__oc`` in the result's name); the result records, per transform, how many
volumes the classifier turned, and the inference time per volume with and without the correction (timed in turns).
Results: ``<results_dir>/<protocol>__<run>[__tta-<mode>][__oc].json`` per model and
``<results_dir>/summary.csv`` (one row per model and TTA mode, rewritten from every JSON there).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import fire
from fire.parser import DefaultParseValue
from monai.bundle import ConfigParser
from vqseg_bundle.benchmarks.dihedral import (
    correction_time_ratio,
    inference_seconds_per_volume,
    score_dihedral,
    worst_drop,
)
from vqseg_bundle.benchmarks.environment import environment, machine_label
from vqseg_bundle.transforms.dihedral import DIHEDRAL_TRANSFORMS

REPO = Path(__file__).resolve().parents[1]
TTA_MODES = ("none", "flip", "dihedral")


def _repo_path(p: str | Path) -> Path:
    return Path(p) if Path(p).is_absolute() else REPO / p


def recorded_overrides(eval_command: str) -> tuple[list[str], dict[str, Any]]:
    """``(config files, {key: value})`` of a recorded ``python -m monai.bundle run ...`` evaluation command,
    values parsed as the bundle's command line parses them (``fire``)."""
    tokens = shlex.split(eval_command)
    args = tokens[tokens.index("run") + 1 :]
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        if not args[i].startswith("--") or i + 1 >= len(args):
            raise ValueError(f"cannot read the recorded evaluation command at {args[i]!r}: {eval_command}")
        overrides[args[i][2:]] = DefaultParseValue(args[i + 1])
        i += 2
    files = overrides.pop("config_file")
    return ([files] if isinstance(files, str) else list(files)), overrides


def build_evaluation(
    record: dict, ckpt_path: str | None, output_dir: Path, tta: str, orientation_classifier: str | None = None
) -> tuple[Any, list, dict]:
    """The bundle's validation evaluator for a model, the validation items and the resolved settings.

    ``record`` is a benchmark run record (its ``eval_command`` gives the config files and overrides) or ``{}`` for
    the bundle's own model: ``configs/train.yaml`` + ``configs/evaluate.yaml`` with their defaults
    (``models/model.pt``, the configured data set), as ``python -m monai.bundle run`` evaluates it.
    """
    if record.get("eval_command"):
        files, overrides = recorded_overrides(record["eval_command"])
    else:
        files, overrides = ["configs/train.yaml", "configs/evaluate.yaml"], {}
    overrides.update(output_dir=str(output_dir), flip_tta=tta == "flip", dihedral_tta=tta == "dihedral")
    if ckpt_path is not None:
        overrides["ckpt_path"] = str(_repo_path(ckpt_path).resolve())
    if orientation_classifier is not None:
        overrides.update(
            orientation_correction=True, orientation_classifier_path=str(_repo_path(orientation_classifier).resolve())
        )
    parser = ConfigParser()
    parser.read_config([str(_repo_path(f)) for f in files])
    parser.update(overrides)
    model = Path(parser.get_parsed_content("ckpt_path"))
    if not model.is_file():
        raise FileNotFoundError(f"{model}: no model file (the run's or the bundle's model.pt; or pass --ckpt_path)")
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("load_weights")
    evaluator = parser.get_parsed_content("validate#evaluator")
    if hasattr(evaluator.inferer, "load"):
        evaluator.inferer.load()
    items = parser.get_parsed_content("splits").validation
    return evaluator, items, {"ckpt_path": str(model), "slice_axis": parser["slice_axis"]}


def write_summary(results_dir: Path) -> Path:
    """``summary.csv``: one row per result JSON in ``results_dir`` (model, TTA, Dice per transform, worst drop)."""
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        row = {"protocol": r["protocol"], "run": r["run"], "seed": r["seed"], "tta": r["tta"]}
        row["orientation_classifier"] = r.get("orientation_classifier") or ""
        row.update({t["transform"]: round(100.0 * t["mean_dice"], 2) for t in r["transforms"]})
        row.update(
            worst=r["worst_transform"],
            worst_drop=r["worst_drop_points"],
            s_per_volume=r.get("inference_seconds_per_volume"),
        )
        rows.append(row)
    out = results_dir / "summary.csv"
    if rows:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return out


def main(
    run_json: str | list[str] | None = None,
    ckpt_path: str | None = None,
    tta: str = "none",
    results_dir: str | None = None,
    work_dir: str = "outputs/dihedral_benchmark",
    orientation_classifier: str | None = None,
) -> list[dict]:
    """Score each run's model under the 8 dihedral transforms of its validation volumes.

    Args:
        run_json: one or more ``scripts/benchmark_acdc.py`` run records (``run.json``); none: the bundle's own
            model (``models/model.pt``, evaluated with configs/train.yaml + configs/evaluate.yaml's defaults).
        ckpt_path: the model for a single run (default: the run's recorded ``--ckpt_path``, or models/model.pt).
        tta: test-time augmentation of the evaluation: ``none``, ``flip`` (3 views) or ``dihedral`` (8 views).
        results_dir: where the per-model JSON and ``summary.csv`` go (default: ``results/orientation`` for
            benchmark runs, ``eval/orientation`` for the bundle's own model).
        work_dir: evaluation outputs (git-ignored).
        orientation_classifier: an orientation classifier (``orientation.pt`` with its ``orientation.json``) to
            evaluate with orientation correction on (required: a missing file is an error).

    Returns:
        the result records (also written and printed).
    """
    runs = [None] if run_json is None else [run_json] if isinstance(run_json, str) else list(run_json)
    if tta not in TTA_MODES:
        raise ValueError(f"--tta must be one of {TTA_MODES}, got {tta!r}")
    if ckpt_path is not None and len(runs) != 1:
        raise ValueError("--ckpt_path needs exactly one --run_json")
    out_dir = _repo_path(results_dir or ("eval/orientation" if run_json is None else "results/orientation"))
    out_dir.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    results = []
    for run in runs:
        record, protocol, name = {}, "bundle", "model"
        if run is not None:
            record_path = _repo_path(run)
            if not record_path.is_file():
                raise FileNotFoundError(f"{record_path}: no benchmark run record (run.json)")
            record = json.loads(record_path.read_text())
            protocol, name = record["protocol"], record_path.parent.name
        stem = (
            f"{protocol}__{name}"
            + ("" if tta == "none" else f"__tta-{tta}")
            + ("__oc" if orientation_classifier else "")
        )
        evaluator, items, info = build_evaluation(
            record, ckpt_path, _repo_path(work_dir) / stem, tta, orientation_classifier
        )
        records = score_dihedral(evaluator, items, slice_axis=int(info["slice_axis"]), transforms=DIHEDRAL_TRANSFORMS)
        worst, drop = worst_drop(records)
        result = {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git.stdout.strip(),
            "machine": machine_label(environment()),
            "command": shlex.join([sys.executable, *sys.argv]),
            "run_json": str(run),
            "protocol": protocol,
            "run": name,
            "seed": record.get("seed"),
            "ckpt_path": info["ckpt_path"],
            "tta": tta,
            "orientation_classifier": orientation_classifier,
            "transforms": records,
            "worst_transform": worst,
            "worst_drop_points": round(drop, 2),
            # the inferer alone (network and test-time augmentation; no metrics), identity orientation
            "inference_seconds_per_volume": round(inference_seconds_per_volume(evaluator, items), 4),
        }
        if orientation_classifier:
            corrector = evaluator.inferer
            result["orientation_settings"] = {
                "min_confidence": corrector.min_confidence,
                "max_slices": corrector.max_slices,
                "equivariant": corrector.equivariant,
            }
            # the classifier's cost: the same inferer with and without it, timed in turns in this process
            result["correction_timing"] = {k: round(v, 4) for k, v in correction_time_ratio(evaluator, items).items()}
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
        dice = ", ".join(f"{r['transform']} {100 * r['mean_dice']:.1f}" for r in records)
        print(
            f"{protocol}/{name} (tta {tta}): {dice}; worst {worst} -{drop:.1f} points; "
            f"inference {result['inference_seconds_per_volume']:.3f} s/volume"
            + (
                f" ({result['correction_timing']['ratio']:.2f} x the time without orientation correction)"
                if "correction_timing" in result
                else ""
            )
        )
    print(f"summary: {write_summary(out_dir)}")
    return results


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)  # the results are printed by main
