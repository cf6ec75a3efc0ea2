"""Orientation robustness (issue 27): the 8-orientation scoring of vqseg_bundle.benchmarks.dihedral and
scripts/benchmark_dihedral.py, on a tiny MONAI evaluator and (slow) on a model the bundle trained on demo data."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted
from vqseg_bundle.benchmarks.dihedral import (
    DihedralItems,
    in_plane_dims,
    inference_seconds_per_volume,
    score_dihedral,
    worst_drop,
)
from vqseg_bundle.inferers import ResizedSliceInferer
from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS, dihedral_transform

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_dihedral.py"
sys.path.insert(0, str(REPO / "tests" / "bundle"))


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_dihedral", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_dihedral"] = module
    spec.loader.exec_module(module)
    return module


class IntensityNet(torch.nn.Module):
    """Class 1 where the intensity is above 0.5: pointwise, so it commutes with every turn and mirror."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 20.0


class TopHalfNet(IntensityNet):
    """The same, but only in the top half of the slice: depends on which way the slice is turned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        logits[:, 1, x.shape[2] // 2 :] = -20.0
        return logits


def _items() -> list[dict]:
    """Two volumes (1, 16, 16, 3) whose foreground (intensity 1) lies in the top-left quarter."""
    items = []
    for i in range(2):
        label = torch.zeros(1, 16, 16, 3, dtype=torch.long)
        label[:, 2 : 7 + i, 1:6] = 1
        items.append({"image": label.float(), "label": label, "name": f"case{i}"})
    return items


def _evaluator(net: torch.nn.Module) -> SupervisedEvaluator:
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=[],
        network=net,
        inferer=ResizedSliceInferer(16),
        postprocessing=AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=2),
        key_val_metric={
            "val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
    )


def test_in_plane_dims():
    assert in_plane_dims(-1) == (1, 2) and in_plane_dims(2) == (1, 2)
    assert in_plane_dims(0) == (2, 3) and in_plane_dims(-2) == (1, 3)
    assert in_plane_dims(0, spatial_ndim=2) == (1, 2)
    with pytest.raises(ValueError, match="slice_axis"):
        in_plane_dims(3)
    with pytest.raises(ValueError, match="spatial"):
        in_plane_dims(-1, spatial_ndim=4)


def test_items_turn_image_and_label_together_in_the_slice_plane():
    item = _items()[0]
    out = DihedralItems(dihedral_transform("rot90"), slice_axis=-1)(item)
    torch.testing.assert_close(out["image"], torch.rot90(item["image"], 1, dims=(1, 2)))
    torch.testing.assert_close(out["label"], torch.rot90(item["label"], 1, dims=(1, 2)))
    assert out["name"] == "case0" and item["image"].shape == (1, 16, 16, 3)  # the input item is untouched
    along_first = DihedralItems(dihedral_transform("mirror"), slice_axis=0)(item)
    torch.testing.assert_close(along_first["image"], torch.flip(item["image"], (2,)))


def test_an_orientation_free_model_scores_the_same_in_all_eight():
    records = score_dihedral(_evaluator(IntensityNet()), _items())
    assert [r["transform"] for r in records] == [t.name for t in DIHEDRAL_TRANSFORMS]
    assert all(r["mean_dice"] == pytest.approx(1.0) for r in records)
    assert worst_drop(records)[1] == pytest.approx(0.0)


def test_a_position_dependent_model_loses_in_the_turns_that_move_the_anatomy_down():
    records = {r["transform"]: r for r in score_dihedral(_evaluator(TopHalfNet()), _items())}
    assert records["identity"]["mean_dice"] == pytest.approx(1.0)
    # a half turn puts the top-left foreground in the bottom half, where this model never predicts it
    assert records["rot180"]["mean_dice"] < 0.01 and records["mirror"]["mean_dice"] < 0.01
    name, drop = worst_drop(list(records.values()))
    assert drop > 99.0 and records[name]["mean_dice"] < 0.01
    assert all(r["seconds_per_volume"] >= 0 for r in records.values())


class CountingNet(IntensityNet):
    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the device can be read
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_inference_time_runs_the_inferer_once_per_volume_and_repeat():
    net = CountingNet()
    evaluator = _evaluator(net)
    seconds = inference_seconds_per_volume(evaluator, _items(), repeats=2)
    assert seconds > 0 and net.calls == 4  # 2 volumes x 2 repeats, 3 slices in one network call each
    evaluator.inferer = ResizedSliceInferer(16, dihedral_tta=True)
    inference_seconds_per_volume(evaluator, _items())
    assert net.calls == 4 + 2 * 8
    with pytest.raises(ValueError, match="no validation items"):
        inference_seconds_per_volume(evaluator, [])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no validation items"):
        score_dihedral(_evaluator(IntensityNet()), [])
    with pytest.raises(ValueError, match="identity"):
        worst_drop([{"transform": "rot90", "mean_dice": 0.5}])


def test_recorded_evaluation_command_is_read_back():
    bd = _load_script()
    cmd = (
        '/x/python -m monai.bundle run --config_file \'["configs/train.yaml","configs/evaluate.yaml"]\' '
        "--seed 1 --vq_levels '[]' --amp False '--weak_aug#dihedral' True --fm_name none --lr 0.01"
    )
    files, overrides = bd.recorded_overrides(cmd)
    assert files == ["configs/train.yaml", "configs/evaluate.yaml"]
    assert overrides == {
        "seed": 1,
        "vq_levels": [],
        "amp": False,
        "weak_aug#dihedral": True,
        "fm_name": "none",
        "lr": 0.01,
    }
    with pytest.raises(ValueError, match="cannot read"):
        bd.recorded_overrides("python -m monai.bundle run --seed")


@pytest.mark.slow
def test_script_scores_a_trained_bundle_model_and_its_identity_is_the_validation_score(tmp_path, one_thread):
    """Train a tiny model on the demo data with the bundle, record it as the benchmark does, score it under the 8
    transforms: the identity reproduces the validation Dice training recorded in models/model.json."""
    from bundle_helpers import TINY, TRAIN, cli_args, run_cli

    overrides = {**TINY, "bundle_root": str(tmp_path), "data_cache_dir": str(tmp_path / "demo"), "seed": 0}
    proc = run_cli(["--config_file", repr([TRAIN])] + cli_args(overrides))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tmp_path / "models" / "model.pt"
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    recorded = record["metric"]["value"]
    # the demo volumes are stored RAS: recorded for inference's orientation report (issue 27 item 4)
    assert record["settings"]["training_axcodes"] == "RAS"
    eval_cmd = shlex.join(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            json.dumps(["configs/train.yaml", "configs/evaluate.yaml"]),
        ]
        + cli_args(overrides)
        + ["--ckpt_path", str(model)]
    )
    run_dir = tmp_path / "results" / "demo" / "unimatch_seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"protocol": "demo", "seed": 0, "eval_command": eval_cmd}))
    bd = _load_script()
    out_dir = tmp_path / "orientation"
    for tta in ("none", "dihedral"):
        (result,) = bd.main(
            run_json=str(run_dir / "run.json"), tta=tta, results_dir=str(out_dir), work_dir=str(tmp_path / "w")
        )
        assert [r["transform"] for r in result["transforms"]] == [t.name for t in DIHEDRAL_TRANSFORMS]
        if tta == "none":
            assert result["transforms"][0]["mean_dice"] == pytest.approx(recorded, abs=1e-4)
        else:
            # with the 8 views averaged the prediction turns with the input: every orientation scores the same
            dice = [r["mean_dice"] for r in result["transforms"]]
            assert max(dice) - min(dice) < 1e-3, dice
    assert (out_dir / "demo__unimatch_seed0.json").is_file() and (
        out_dir / "demo__unimatch_seed0__tta-dihedral.json"
    ).is_file()
    rows = (out_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("protocol,run,seed,tta,orientation_classifier,identity")
    # with orientation correction: training saved a classifier beside the model (train.yaml orientation_correction
    # "auto"); marked reliable here so that it is used, the result says what it turned per transform
    classifier = tmp_path / "models" / "orientation.pt"
    oc_record = json.loads(classifier.with_suffix(".json").read_text())
    assert oc_record["validation"]["volumes"] > 0
    forced = tmp_path / "oc" / "orientation.pt"
    forced.parent.mkdir()
    forced.write_bytes(classifier.read_bytes())
    forced.with_suffix(".json").write_text(json.dumps({**oc_record, "reliable": True}))
    (result,) = bd.main(
        run_json=str(run_dir / "run.json"),
        results_dir=str(out_dir),
        work_dir=str(tmp_path / "w"),
        orientation_classifier=str(forced),
    )
    assert result["orientation_classifier"] == str(forced)
    turned = [r["volumes_turned_back"] for r in result["transforms"]]
    assert all(0 <= n <= oc_record["validation"]["volumes"] for n in turned)
    assert (out_dir / "demo__unimatch_seed0__oc.json").is_file()
    assert result["orientation_settings"] == {"min_confidence": 0.5, "max_slices": 4, "equivariant": True}
    timing = result["correction_timing"]
    assert timing["with_correction"] > 0 and timing["without_correction"] > 0
    assert timing["ratio"] == pytest.approx(timing["with_correction"] / timing["without_correction"], rel=1e-2)
    with pytest.raises(FileNotFoundError, match="no benchmark run record"):
        bd.main(run_json=str(tmp_path / "missing" / "run.json"), results_dir=str(out_dir))
