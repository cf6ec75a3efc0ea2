"""summarize / CSV writers / table, and CaseMetricsHandler inside a MONAI evaluator."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import AsDiscreted, Compose
from vqseg_bundle.metrics import (
    CaseClassMetrics,
    CaseMetricsHandler,
    format_summary_table,
    summarize,
    write_case_csv,
    write_summary_csv,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def rec(case, c, dice, hd, status="ok"):
    return CaseClassMetrics(case, c, f"c{c}", status, 1, 1, dice, dice / 2, hd, hd, math.nan, math.nan, "")


RECORDS = [
    rec("a", 1, 0.5, 2.0),
    rec("a", 2, 1.0, 0.0),
    rec("b", 1, 1.0, 4.0),
    rec("b", 2, 0.0, math.nan, "pred_empty"),
]


def test_summary_by_hand():
    rows = {r["class_name"]: r for r in summarize(RECORDS)}
    assert list(rows) == ["c1", "c2", "mean"]
    assert rows["c1"]["dice_mean"] == pytest.approx(0.75) and rows["c1"]["dice_std"] == pytest.approx(0.25)
    assert rows["c1"]["hd95_vox_mean"] == pytest.approx(3.0) and rows["c1"]["hd95_vox_n"] == 2
    # the missed structure is counted, and its NaN distance is excluded from the mean with n saying so
    assert rows["c2"]["n_pred_empty"] == 1 and rows["c2"]["hd95_vox_n"] == 1 and rows["c2"]["hd95_vox_mean"] == 0.0
    # overall: per-case class means (a: 0.75, b: 0.5), then mean / std over cases
    assert rows["mean"]["dice_mean"] == pytest.approx(0.625) and rows["mean"]["dice_std"] == pytest.approx(0.125)
    assert rows["mean"]["hd95_vox_n"] == 1 and rows["mean"]["hd95_vox_mean"] == pytest.approx(1.0)
    assert rows["mean"]["n_pred_empty"] == 1 and rows["mean"]["n_cases"] == 2
    assert rows["mean"]["hd95_mm_n"] == 0 and math.isnan(rows["mean"]["hd95_mm_mean"])
    assert summarize([]) == []


def test_csv_and_table(tmp_path):
    p = write_case_csv(RECORDS, tmp_path / "sub" / "cases.csv")
    rows = list(csv.DictReader(open(p)))
    assert len(rows) == 4 and rows[3]["status"] == "pred_empty" and rows[3]["hd95_vox"] == "nan"
    s = write_summary_csv(summarize(RECORDS), tmp_path / "summary.csv")
    srows = list(csv.DictReader(open(s)))
    assert [r["class_name"] for r in srows] == ["c1", "c2", "mean"]
    table = format_summary_table(summarize(RECORDS))
    assert "c1" in table and "mean" in table and "[n=1]" in table and "0.7500 ± 0.2500" in table
    assert "hd95_mm" not in table  # all-NaN millimetre columns are left out
    assert format_summary_table([]) == "(no cases)"


class OracleNet(torch.nn.Module):
    """Returns one-hot logits of a label map smuggled in as the image (image = label)."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].long(), 3).movedim(-1, 1).float()


def make_items():
    items = []
    for i, (shift, spacing) in enumerate([(0, (1.0, 2.0, 5.0)), (1, None)]):
        lab = torch.zeros(1, 8, 9, 3)
        lab[0, 2:5, 2:6, :] = 1
        lab[0, 6:8, 1:3, 1] = 2
        img = torch.roll(lab, shifts=shift, dims=1)  # case 1 is shifted by one row
        item = {"image": img, "label": lab, "name": f"case{i}"}
        if spacing is not None:
            item["spacing"] = torch.tensor(spacing)
        items.append(item)
    return items


def test_handler_in_evaluator(tmp_path, capsys):
    handler = CaseMetricsHandler(num_classes=3, output_dir=tmp_path / "eval", class_names=["bg", "one", "two"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(make_items()), batch_size=1),  # items differ in keys
        network=OracleNet(),
        inferer=SimpleInferer(),
        postprocessing=Compose(
            [AsDiscreted(keys="pred", argmax=True, to_onehot=3), AsDiscreted(keys="label", to_onehot=3)]
        ),
        val_handlers=[handler],
    )
    evaluator.run()
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics_per_case.csv")))
    assert [(r["case"], r["class_name"]) for r in rows] == [
        ("case0", "one"),
        ("case0", "two"),
        ("case1", "one"),
        ("case1", "two"),
    ]
    r0 = {r["class_name"]: r for r in rows if r["case"] == "case0"}
    assert float(r0["one"]["dice"]) == 1.0 and float(r0["one"]["hd95_mm"]) == 0.0 and r0["one"]["spacing"] == "1x2x5"
    r1 = {r["class_name"]: r for r in rows if r["case"] == "case1"}
    assert float(r1["one"]["hd95_vox"]) == pytest.approx(1.0)  # shifted by one row
    assert r1["one"]["hd95_mm"] == "nan"  # no spacing known for case1
    assert (tmp_path / "eval" / "metrics_summary.csv").is_file()
    assert evaluator.state.metrics["case_dice"] < 1.0
    assert "one" in capsys.readouterr().out
    # a second run resets the records
    evaluator.run()
    assert len(handler.records) == 4


def test_handler_batched_and_penalty(tmp_path):
    """Batches of two (the handler decollates), names from the source file when items have none."""
    items = make_items()
    for it in items:
        it["spacing"] = torch.tensor([1.0, 1.0, 3.0])
        it.pop("name")
    items[1]["image"] = torch.zeros_like(items[1]["image"])  # case 1 predicts nothing: both classes missed
    handler = CaseMetricsHandler(num_classes=3, output_dir=tmp_path, empty_distance="penalty", penalty=99.0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=2),
        network=OracleNet(),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        val_handlers=[handler],
    )
    evaluator.run()
    rows = list(csv.DictReader(open(tmp_path / "metrics_per_case.csv")))
    assert [r["case"] for r in rows] == ["case_0000", "case_0000", "case_0001", "case_0001"]
    assert [r["status"] for r in rows] == ["ok", "ok", "pred_empty", "pred_empty"]
    assert all(float(r["hd95_mm"]) == 99.0 for r in rows[2:])
    summary = {r["class_name"]: r for r in handler.summary}
    assert summary["mean"]["n_pred_empty"] == 2 and summary["mean"]["hd95_vox_n"] == 2
    assert summary["mean"]["hd95_vox_mean"] == pytest.approx(99.0 / 2)


def test_handler_missing_label_and_bad_args():
    with pytest.raises(ValueError, match="num_classes"):
        CaseMetricsHandler(num_classes=1)
    with pytest.raises(ValueError, match="empty_distance"):
        CaseMetricsHandler(num_classes=3, empty_distance="zero")
    handler = CaseMetricsHandler(num_classes=3, print_table=False)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset([{"image": torch.zeros(1, 4, 4)}]), batch_size=1),
        network=OracleNet(),
        val_handlers=[handler],
    )
    with pytest.raises(ValueError, match="'label'"):
        evaluator.run()
