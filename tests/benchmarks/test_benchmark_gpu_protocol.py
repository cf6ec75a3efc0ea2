"""scripts/gpu_protocol.sh / gpu_protocol.py: budget arithmetic, packing limits, process handling, and the whole
command end to end on the CPU with a tiny budget (so it is known to work before a GPU is ever lent)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_protocol", REPO / "scripts" / "gpu_protocol.py")
gp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gp)

ACDC = REPO.parent / "shared" / "data" / "acdc"


def small_acdc_archive(tmp_path: Path, unlabeled: int = 40, volumes: int = 2) -> Path:
    """A tar archive in the layout of ``acdc_8bit.tar.xz`` (an ``acdc/`` folder, SSL4MIS layout) holding the 3
    labeled patients, ``unlabeled`` more training slices and ``volumes`` validation volumes of the ACDC copy: the
    GPU protocol's archive path, at a fraction of the evaluation time of all 20 volumes."""
    import tarfile as _tarfile

    lines = lambda name: (ACDC / name).read_text().split()  # noqa: E731
    labeled = lines("labeled_3_cases.list")
    train = labeled + [n for n in lines("train_slices.list") if n not in set(labeled)][:unlabeled]
    val = lines("val.list")[:volumes]
    archive = tmp_path / "acdc_small.tar.gz"
    lists = tmp_path / "lists"
    lists.mkdir()
    for name, items in (("train_slices.list", train), ("labeled_3_cases.list", labeled), ("val.list", val)):
        (lists / name).write_text("\n".join(items) + "\n")
    with _tarfile.open(archive, "w:gz") as tar:
        for name in ("train_slices.list", "labeled_3_cases.list", "val.list"):
            tar.add(lists / name, arcname=f"acdc/{name}")
        for n in train:
            tar.add(ACDC / "data" / "slices" / f"{n}.h5", arcname=f"acdc/data/slices/{n}.h5")
        for n in val:
            tar.add(ACDC / "data" / f"{n}.h5", arcname=f"acdc/data/{n}.h5")
    return archive


def _points(start: float, per_it: float, iters: int, every: int) -> list[tuple[int, float]]:
    return [(s, start + s * per_it) for s in range(every, iters + 1, every)]


def test_calibration_measures_the_shared_window_and_the_fixed_cost():
    # two runs iterating side by side from t=10 s: 0.1 s/it and 0.3 s/it; 100 iterations each
    runs = {
        "fast": {"points": _points(10.0, 0.1, 100, 10), "val_walls": [21.0], "train_s": 30.0, "iters": 100},
        "slow": {"points": _points(10.0, 0.3, 100, 10), "val_walls": [42.0], "train_s": 50.0, "iters": 100},
    }
    runs["fast"].update(eval_s=8.0, wall_s=45.0)
    runs["slow"].update(eval_s=9.0, wall_s=70.0)
    costs = gp.calibrate(runs, parallel=True)
    assert costs["fast"]["per_it_s"] == pytest.approx(0.1, rel=1e-6)
    assert costs["slow"]["per_it_s"] == pytest.approx(0.3, rel=1e-6)
    assert "shared window" in costs["slow"]["how"]
    assert costs["slow"]["val_s"] == pytest.approx(2.0)  # validation after the last logged iteration
    assert costs["slow"]["fixed_s"] == pytest.approx(70.0 - 100 * 0.3 - 2.0)


def test_calibration_without_overlap_assumes_the_runs_serialise():
    runs = {
        "a": {"points": _points(0.0, 0.1, 20, 10), "train_s": 5.0, "eval_s": 1.0, "iters": 20, "wall_s": 9.0},
        "b": {"points": _points(100.0, 0.1, 20, 10), "train_s": 5.0, "eval_s": 1.0, "iters": 20, "wall_s": 9.0},
    }
    costs = gp.calibrate(runs, parallel=True)
    assert costs["a"]["per_it_s"] == pytest.approx(0.2) and "did not overlap" in costs["a"]["how"]


def test_sequential_calibration_shares_out_the_one_process_wall_time():
    runs = {
        "a": {"points": _points(0.0, 0.1, 20, 5), "train_s": 6.0, "eval_s": 2.0, "iters": 20, "wall_s": 40.0},
        "b": {"points": _points(50.0, 0.2, 20, 5), "train_s": 9.0, "eval_s": 2.0, "iters": 20, "wall_s": 40.0},
    }
    costs = gp.calibrate(runs, parallel=False)
    assert costs["a"]["how"] == "own window" and costs["b"]["per_it_s"] == pytest.approx(0.2)
    loops = 20 * 0.1 + 20 * 0.2
    assert costs["a"]["fixed_s"] + costs["b"]["fixed_s"] == pytest.approx(40.0 - loops)


COSTS = {
    "a": {"per_it_s": 0.05, "val_s": 3.0, "overhead_s": 10.0, "eval_s": 10.0, "fixed_s": 30.0},
    "b": {"per_it_s": 0.10, "val_s": 4.0, "overhead_s": 12.0, "eval_s": 12.0, "fixed_s": 35.0},
}


@pytest.mark.parametrize("seconds", [60.0, 200.0, 333.0, 1000.0])
def test_plan_is_a_multiple_of_val_every_and_fits(seconds):
    plan = gp.plan_iterations(COSTS, seconds, 200, parallel=True)
    assert plan["iterations"] % plan["val_every"] == 0
    assert plan["predicted_s"] <= seconds
    # the slowest run and the largest fixed cost set the schedule of all
    assert plan["per_it_s"] == 0.10 and plan["fixed_s"] == 35.0
    if seconds == 1000.0:  # (1000 - 35) // (200 * 0.1 + 4) = 40 intervals
        assert plan["iterations"] == 40 * 200


def test_plan_shrinks_the_interval_caps_and_gives_up():
    small = gp.plan_iterations(COSTS, 50.0, 200, parallel=True)  # 15 s left: (15 - 4) / 0.1 = 110 at most
    assert small["iterations"] == small["val_every"] and small["iterations"] in (100, 110)
    assert small["predicted_s"] <= 50.0
    assert gp.plan_iterations(COSTS, 30.0, 200, parallel=True)["iterations"] == 0
    assert gp.plan_iterations(COSTS, 1e6, 200, parallel=True, max_iters=30000)["iterations"] == 30000
    seq = gp.plan_iterations(COSTS, 1000.0, 100, parallel=False)
    assert seq["per_it_s"] == pytest.approx(0.15) and seq["fixed_s"] == pytest.approx(65.0)
    assert seq["predicted_s"] <= 1000.0


def test_pack_leaves_out_checkpoints_and_then_events_to_fit(tmp_path):
    run = tmp_path / "runs" / "v"
    (run / "tensorboard").mkdir(parents=True)
    (run / "models").mkdir()
    (run / "models" / "model.pt").write_bytes(b"x" * 1000)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(os.urandom(50_000))
    (run / "train.log").write_text("loss 1\n" * 10)
    (run / "run.json").write_text("{}")
    archive = tmp_path / "a.tar.gz"
    assert gp.pack(archive, [(tmp_path / "runs", "runs")]) == []
    with tarfile.open(archive) as tar:
        got = set(tar.getnames())
    assert "runs/v/run.json" in got and "runs/v/tensorboard/events.out.tfevents.1" in got
    assert not any(n.endswith(".pt") for n in got)
    dropped = gp.pack(archive, [(tmp_path / "runs", "runs")], limit=20_000)
    with tarfile.open(archive) as tar:
        got = set(tar.getnames())
    assert dropped and "runs/v/run.json" in got and not any("tfevents" in n for n in got)


def test_output_folder_limits(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}").write_text("x")
    assert gp.check_out(tmp_path) == []
    (tmp_path / "f8").write_text("x")
    assert gp.check_out(tmp_path) == ["9 files (at most 8)"]


def test_best_model_is_the_best_evaluated_one_under_the_limit(tmp_path):
    def run(name, dice, size):
        pt = tmp_path / f"{name}.pt"
        pt.write_bytes(b"0" * size)
        return {"variant": name, "metrics": {"mean": {"dice": dice}}, "model_pt": str(pt), "curve": []}

    runs = [run("a", 0.5, 10), run("b", 0.7, 100), run("c", 0.6, 10)]
    best, note = gp.best_model(runs, limit=50)
    assert best["variant"] == "c" and "b: model.pt" in note
    assert gp.best_model([{"variant": "x", "model_pt": ""}])[0] is None


def test_speed_rows_survive_a_killed_benchmark_and_choose_the_precision(tmp_path):
    log = tmp_path / "speed.log"
    rows = [
        {"backbone": "unet", "eps": 0.7, "variant": "fp32", "ms_per_it": 40.0},
        {"backbone": "unet", "eps": 0.7, "variant": "bf16_cl", "ms_per_it": 25.0},
    ]
    log.write_text("noise\n" + "".join(f"# result {json.dumps(r)}\n" for r in rows) + "# result {broken\n")
    got = gp.speed_rows(log)
    assert got == rows
    assert gp.choose_precision("auto", got)[0] == "bf16_cl"
    assert gp.choose_precision("auto", [dict(rows[0]), dict(rows[1], ms_per_it=38.0)])[0] == "fp32"
    assert gp.choose_precision("tf32", [])[0] == "tf32"
    with pytest.raises(ValueError):
        gp.choose_precision("fp8", [])


def test_literals_and_names():
    assert gp.literal("{'amp': True}") == {"amp": True} and gp.literal('{"amp": true}') == {"amp": True}
    assert gp.literal("") is None
    assert gp.names("a, b,c") == ["a", "b", "c"] and gp.names("['a', 'b']") == ["a", "b"]


def test_side_by_side_runs_are_limited_and_killed_with_their_children(tmp_path, monkeypatch):
    marker = tmp_path / "grandchild_alive"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import pathlib, time\ntime.sleep(3)\npathlib.Path({str(marker)!r}).write_text('x')\n")
    child = f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(grandchild)!r}]); time.sleep(30)"

    def fake_cmd(args, variants, iters, val_every, extra, results, timeout):
        code = "print('quick')" if variants == ["quick"] else child
        return [sys.executable, "-c", code]

    monkeypatch.setattr(gp, "bench_cmd", fake_cmd)
    args = type("A", (), {"parallel": 1})()
    start = time.time()
    codes = gp.run_variants(args, ["quick", "stuck"], 1, 1, {}, tmp_path, tmp_path / "logs", 2.0, 1, None, print)
    assert codes["quick"][0] == 0 and codes["stuck"][0] == 124
    assert time.time() - start < 10
    time.sleep(3.5)
    assert not marker.exists(), "the killed run's own child process outlived it"
    assert "quick" in (tmp_path / "logs" / "benchmark_quick.log").read_text()


@pytest.mark.slow
def test_the_protocol_runs_end_to_end_on_the_cpu(tmp_path):
    """The GPU command, verbatim, with DEVICE=cpu and a tiny budget: a small ACDC archive (or the demo phantoms), two
    variants one after the other (one training process at a time), 32 px, a few iterations; about 100 s."""
    out = tmp_path / "out"
    budget = 170
    env = dict(
        os.environ,
        DEVICE="cpu",
        BUDGET_S=str(budget),
        TESTS="0",
        VARIANTS="labeled_only,vq_unimatch_qpm_dropout_guarded",
        PARALLEL="0",
        CAL_ITERS="4",
        VAL_EVERY="2",
        LOG_EVERY="1",
        MAX_ITERS="6",
        BACKBONES="unet",
        SPEED_VARIANTS="fp32",
        SPEED_EPS="0.7",
        SPEED_ITERS="2",
        SPEED_WARMUP="1",
        BENCH_SET=json.dumps(
            {
                "image_size": 32,
                "codebook_size": 32,
                "network_def#features": [4, 8, 16, 32, 32],
                "batch_size_labeled": 2,
                "batch_size_unlabeled": 2,
                "fm_name": "none",
            }
        ),
        TRAIN_EXTRA=repr(
            {
                "image_size": 32,
                "network_def#features": [4, 8, 16, 32],
                "codebook_size": 64,
                "batch_size_labeled": 2,
                "batch_size_unlabeled": 2,
                "num_workers": 0,
            }
        ),
        WORK=str(tmp_path / "work"),
        PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
    )
    if (ACDC / "train_slices.list").is_file():
        env["DATASET_ARCHIVE"] = str(small_acdc_archive(tmp_path))
    else:
        env["DATASET_DIR"] = "demo"
    start = time.time()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_protocol.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=budget + 120,
    )
    wall = time.time() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert wall < budget + 30, f"took {wall:.0f} s for a {budget} s budget"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert 0 < len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert {p.name for p in files} >= {"summary.md", "results.json", "protocol.tar.gz", "model.pt", "protocol.log"}
    summary = (out / "summary.md").read_text()
    for section in ("## Speed table", "## Calibration and plan", "## Results"):
        assert section in summary
    assert "| unet | 2+2x2 | 32 | 0.7 | fp32 |" in summary  # the speed row
    report = json.loads((out / "results.json").read_text())
    assert set(report["calibration"]["costs"]) == {"labeled_only", "vq_unimatch_qpm_dropout_guarded"}
    assert report["runs"] and report["best_model"]["variant"] in report["variants"]
    if report["plan"]["iterations"]:  # the real runs fitted the budget
        assert report["plan"]["iterations"] % report["plan"]["val_every"] == 0
        assert any(r["status"] == "ok" and r["metrics"] for r in report["runs"])
    with tarfile.open(out / "protocol.tar.gz") as tar:
        members = tar.getnames()
    assert "logs/curves.csv" in members and "speed/speed.md" in members and "logs/summary.md" in members
    assert any(m.endswith("metrics_summary.csv") for m in members)
    import torch

    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state


def test_without_a_gpu_the_default_command_stops_at_once(tmp_path):
    """The default (DEVICE=cuda) on a machine without CUDA refuses to train the 256 px protocol on the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = {k: v for k, v in os.environ.items() if k not in ("DEVICE", "BUDGET_S")}
    env.update(WORK=str(tmp_path / "work"), PYTHON=sys.executable, DATASET_DIR="demo")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_protocol.sh"), str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "torch sees no CUDA device" in (tmp_path / "out" / "summary.md").read_text()
    assert gp.check_out(tmp_path / "out") == []
