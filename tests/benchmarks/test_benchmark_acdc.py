"""Tests of scripts/benchmark_acdc.py and vqseg_bundle.benchmarks: command construction, report section, and one
tiny end-to-end run.

The end-to-end test trains and evaluates the ``labeled_only`` variant for 2 iterations on the built-in
synthetic phantoms (``dataset_dir demo``), through the same subprocesses as the real benchmark
(about 40 s on the 2-core CPU); it needs no ACDC data.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from fire import parser as fire_parser
from vqseg_bundle.benchmarks import commands, protocols, publish, variants
from vqseg_bundle.benchmarks.archive import unpack_dataset

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_acdc.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_acdc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_acdc"] = module
    spec.loader.exec_module(module)
    return module


bm = _load()


@pytest.mark.parametrize("value", [True, False, None, 0.0, 3, [], [8, 16, 32], ["bottleneck"], {"a": True}])
def test_cli_value_round_trips_through_fire(value):
    # monai.bundle parses its command line with fire: the token must come back as the same Python value
    assert fire_parser.DefaultParseValue(commands.cli_value(value)) == value


def test_cli_value_rejects_objects():
    with pytest.raises(ValueError, match="cannot pass"):
        commands.cli_value(object())


@pytest.mark.parametrize("variant", sorted(variants.VARIANTS))
def test_commands_carry_variant_and_protocol(variant, tmp_path):
    proto = protocols.PROTOCOLS["cpu"]
    run_dir = tmp_path / "cpu" / "labeled7" / variant
    train, evaluate = commands.build_commands(proto, variant, 7, "/data/acdc", run_dir, seed=5)

    def pairs(cmd):
        return {cmd[i][2:]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}

    t, e = pairs(train), pairs(evaluate)
    assert train[3:5] == ["run", "training"]
    assert t["labeled"] == "labeled_7_cases" and t["seed"] == "5" and t["dataset_dir"] == "/data/acdc"
    assert "evaluate.yaml" in e["config_file"] and e["ckpt_path"].endswith("models/model.pt")
    # evaluation rebuilds exactly the trained network: every training override is repeated
    assert all(e[k] == v for k, v in t.items() if k != "config_file")
    for key, value in variants.variant_overrides(variant, proto).items():
        assert fire_parser.DefaultParseValue(t[key]) == value
    # the schedule is the protocol's, identical for every variant
    assert int(t["epochs"]) * int(t["iterations_per_epoch"]) == proto.iterations
    assert int(t["image_size"]) == proto.image_size


def test_variant_semantics():
    cpu = protocols.PROTOCOLS["cpu"]
    lo = variants.variant_overrides("labeled_only", cpu)
    assert lo["unsup_weight"] == 0 and lo["vq_levels"] == [] and lo["perturbation"] == "none"
    assert variants.variant_overrides("dropout_mt", cpu)["perturbation"] == "dropout"
    assert variants.variant_overrides("vq_qpm", cpu)["recon_weight"] == 0
    assert variants.variant_overrides("vq_qpm_rec", cpu)["fm_name"] == "none"
    assert variants.variant_overrides("vqseg_full", cpu)["fm_name"] == "efficientnet_lite0"
    assert variants.variant_overrides("vqseg_full", protocols.PROTOCOLS["gpu_vit"])["fm_name"] == "dinov2"
    eps = sorted(variants.variant_overrides(f"vqseg_full_eps{e}", cpu)["qpm_eps"] for e in (0.1, 0.3, 0.5, 0.7, 0.9))
    assert eps == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert variants.variant_overrides("vqseg_full_shuffle", cpu)["qpm_mode"] == "shuffle"
    with pytest.raises(ValueError, match="unknown variant"):
        variants.variant_overrides("nope", cpu)


def test_gpu_protocol_is_the_literature_schedule():
    gpu = protocols.PROTOCOLS["gpu"].schedule_overrides()
    assert gpu["image_size"] == 256 and gpu["epochs"] * gpu["iterations_per_epoch"] == 30000
    assert gpu["batch_size_labeled"] == 12 and gpu["batch_size_unlabeled"] == 12
    assert protocols.PROTOCOLS["gpu_vit"].image_size == 224


def test_write_section_replaces_only_the_marked_text(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(
        f"# T\nbefore\n{publish.MARK_START}\nold\n{publish.MARK_END}\nafter\n<!-- x:start -->keep<!-- x:end -->\n"
    )
    publish.write_section(doc, "new body\n")
    text = doc.read_text()
    assert "old" not in text and "new body" in text
    assert text.startswith("# T\nbefore\n") and text.endswith("after\n<!-- x:start -->keep<!-- x:end -->\n")
    other = tmp_path / "other.md"
    publish.write_section(other, "body\n")  # no markers yet: a section is appended
    assert publish.MARK_START in other.read_text() and "body" in other.read_text()


@pytest.mark.parametrize("word", ["false", "False", "no", "0", 0, False])
def test_as_flag_reads_false_spellings(word):
    # fire gives `--report false` as the string 'false': it must not count as true
    assert commands.as_flag(word, "report") is False
    assert commands.as_flag(fire_parser.DefaultParseValue(str(word)), "report") is False


@pytest.mark.parametrize("word", ["true", "TRUE", "yes", "1", 1, True])
def test_as_flag_reads_true_spellings(word):
    assert commands.as_flag(word, "force") is True


def test_as_flag_rejects_other_values():
    with pytest.raises(ValueError, match="--report must be true or false"):
        commands.as_flag("maybe", "report")
    with pytest.raises(ValueError, match="--force"):
        commands.as_flag(2, "force")


def test_report_false_string_does_not_rewrite_the_docs(tmp_path, monkeypatch):
    """`--report false` on the command line: the docs section is left alone."""
    written = []
    monkeypatch.setattr(bm.Benchmark, "report", lambda self, **kw: written.append(kw))
    monkeypatch.setattr(bm, "run_benchmark", lambda **kw: [])
    bm.Benchmark().run(dataset_dir="demo", report="false")
    assert written == []
    bm.Benchmark().run(dataset_dir="demo", report="true")
    assert len(written) == 1


def test_run_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="protocol"):
        bm.Benchmark().run(protocol="tpu", dry_run=True)
    with pytest.raises(ValueError, match="unknown variant"):
        bm.Benchmark().run(variants=["nope"], dry_run=True, dataset_dir="demo")
    with pytest.raises(ValueError, match="does not exist"):
        bm.Benchmark().run(dataset_dir=str(tmp_path / "missing"), dry_run=True)


def test_end_to_end_smoke(tmp_path):
    """Train + evaluate + report one variant for 2 iterations on the demo phantoms."""
    results, docs = tmp_path / "results", tmp_path / "docs"
    doc = docs / "results.md"
    docs.mkdir()
    doc.write_text(f"# R\n{publish.MARK_START}\nNot run yet.\n{publish.MARK_END}\n")
    b = bm.Benchmark()
    b.run(
        protocol="smoke",
        labeled=3,
        variants=["labeled_only"],
        dataset_dir="demo",
        work_dir=str(tmp_path / "work"),
        results_dir=str(results),
        docs_file=str(doc),
        docs_dir=str(docs),
        timeout=300,
    )
    (record,) = b.records
    res = results / "acdc_smoke" / "labeled3" / "labeled_only"
    assert record["status"] == "ok", record.get("error_tail")
    saved = json.loads((res / "run.json").read_text())
    assert "monai.bundle run training" in saved["train_command"] and saved["environment"]["torch"]
    with open(res / "metrics_summary.csv") as f:
        classes = {r["class_name"] for r in csv.DictReader(f)}
    assert {"RV", "Myo", "LV", "mean"} <= classes
    with open(res / "curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in curve] == [2] and 0.0 <= float(curve[0]["val_mean_dice"]) <= 1.0
    text = doc.read_text()
    assert "Not run yet" not in text and "| labeled_only |" in text
    assert (docs / "acdc_curves_smoke_3.png").stat().st_size > 0
    # a finished run is skipped, not retrained
    b.run(
        protocol="smoke",
        labeled=3,
        variants=["labeled_only"],
        dataset_dir="demo",
        work_dir=str(tmp_path / "work"),
        results_dir=str(results),
        docs_file=str(doc),
        docs_dir=str(docs),
        report=False,
    )
    assert b.records[0]["train_seconds"] == record["train_seconds"]


def _acdc_like_tree(root: Path) -> Path:
    folder = root / "acdc"
    (folder / "data" / "slices").mkdir(parents=True)
    (folder / "train_slices.list").write_text("patient001_frame01_slice_1\n")
    (folder / "data" / "slices" / "patient001_frame01_slice_1.h5").write_bytes(b"not really hdf5")
    return folder


def test_unpack_dataset_once_and_finds_the_acdc_folder(tmp_path):
    import tarfile

    src = _acdc_like_tree(tmp_path / "src")
    archive = tmp_path / "acdc_8bit.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(src, arcname="acdc")
    dest = tmp_path / "unpacked"
    found = unpack_dataset(archive, dest)
    assert found == dest / "acdc" and (found / "data" / "slices" / "patient001_frame01_slice_1.h5").exists()
    (found / "train_slices.list").write_text("edited\n")  # a second call must not unpack again
    assert unpack_dataset(archive, dest) == found
    assert (found / "train_slices.list").read_text() == "edited\n"


def test_unpack_dataset_errors_name_the_archive(tmp_path):
    import tarfile

    with pytest.raises(FileNotFoundError, match="missing.tar.xz"):
        unpack_dataset(tmp_path / "missing.tar.xz", tmp_path / "d")
    not_tar = tmp_path / "notes.tar.xz"
    not_tar.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="notes.tar.xz: not a tar archive"):
        unpack_dataset(not_tar, tmp_path / "d")
    other = tmp_path / "other.tar"
    (tmp_path / "x.txt").write_text("x")
    with tarfile.open(other, "w") as tar:
        tar.add(tmp_path / "x.txt", arcname="x.txt")
    with pytest.raises(ValueError, match="other.tar: holds no train_slices.list"):
        unpack_dataset(other, tmp_path / "d2")


def test_report_names_runs_made_under_an_earlier_schedule():
    """A protocol changed after some runs (e.g. bf16 -> fp32): the report says which runs used the old schedule."""
    from vqseg_bundle.benchmarks.report import _other_schedules

    records = {
        "labeled_only": {"protocol_description": "128 px, bf16"},
        "labeled_only_seed1": {"protocol_description": "128 px, fp32"},
        "unimatch": {"protocol_description": "128 px, fp32"},
        "old_record": {},
    }
    assert _other_schedules("128 px, fp32", records) == [
        "Run under an earlier schedule (`labeled_only`): 128 px, bf16.",
        "",
    ]
    assert _other_schedules("128 px, bf16", {"a": records["labeled_only"]}) == []
