"""Issue 15, training side: crash-safe checkpoints and model.pt, resume past broken checkpoints, a better model
never replaced by a worse or non-finite one, skipped non-finite steps restoring BatchNorm, terminate_on_nan failing.

Each test reproduces a case measured in the issue (they failed on the code before it):

* kill -9 during a save leaves a 0-byte model.pt / checkpoint: ``test_kill_during_saves_always_leaves_loadable_files``
* resume on a 0-byte checkpoint: bare EOFError: ``test_resume_skips_checkpoints_that_do_not_load``
* full disk: truncated file, "iostream error": ``test_write_error_names_file_and_cause_and_keeps_old_file``
* n_saved=1 deletes the old checkpoint before the new one is written: ``test_old_checkpoint_removed_only_after_new_one``
* a fresh run overwrites a better model.pt: ``test_worse_model_never_replaces_recorded_better_one``
* non-finite BatchNorm buffers in model.pt: ``test_non_finite_model_is_never_written``,
  ``test_skipped_step_restores_batchnorm_buffers``
* --terminate_on_nan exits 0: ``test_terminate_on_nan_fails_the_run``
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import make_trainer
from ignite.engine import Engine, Events
from vqseg_bundle.engines import (
    BestModelSaver,
    NonFiniteLossError,
    TerminateOnNonFinite,
    TrainerCheckpointSaver,
    checkpoint_problem,
    resume_path,
)
from vqseg_bundle.fileio import WriteError, atomic_torch_save

ROOT = Path(__file__).resolve().parents[2]


class _Evaluator:
    """The bits of an evaluator BestModelSaver reads."""

    def __init__(self, score: float, epoch: int = 1) -> None:
        from types import SimpleNamespace

        self.state = SimpleNamespace(metrics={"val_mean_dice": score}, epoch=epoch, key_metric_name="val_mean_dice")


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))


def _engine() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = 3, 30
    engine.state.epoch_length, engine.state.max_epochs = 10, 5
    return engine


def _saver(tmp_path: Path, net: torch.nn.Module, **kwargs) -> TrainerCheckpointSaver:
    saver = TrainerCheckpointSaver(str(tmp_path), {"network": net}, **kwargs)
    saver.attach(_engine())
    return saver


def test_resume_skips_checkpoints_that_do_not_load(tmp_path, caplog):
    good = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"trainer": {"epoch": 1}, "network": {}}, good)
    truncated = tmp_path / "checkpoint_epoch=2.pt"
    torch.save({"trainer": {"epoch": 2}, "network": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    empty = tmp_path / "checkpoint_final.pt"
    empty.write_bytes(b"")
    now = time.time()
    for i, f in enumerate((good, truncated, empty)):
        os.utime(f, (now + i, now + i))
    with caplog.at_level(logging.WARNING):
        assert resume_path(True, tmp_path) == str(good)
    log = caplog.text
    assert str(empty) in log and "0 bytes" in log
    assert str(truncated) in log and "does not load" in log
    # nothing loads: the error lists every file and why
    good.write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        resume_path(True, tmp_path)
    assert str(good) in str(err.value) and str(truncated) in str(err.value)
    # an explicit path that does not load names it
    with pytest.raises(FileNotFoundError, match="checkpoint_final.pt.*empty"):
        resume_path(str(empty), tmp_path)


def test_checkpoint_files_load_with_monai_and_keep_layout(tmp_path):
    from monai.handlers import CheckpointLoader

    net = _net()
    saver = _saver(tmp_path, net, save_interval=1, n_saved=1)
    saver.interval_completed(saver.engine)
    saver.completed(saver.engine)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=3.pt", "checkpoint_final.pt"]
    assert checkpoint_problem(tmp_path / "checkpoint_final.pt") is None
    net2, engine2 = _net(), Engine(lambda e, b: None)
    CheckpointLoader(str(tmp_path / "checkpoint_final.pt"), {"network": net2, "trainer": engine2}).attach(engine2)
    engine2.run([0] * 10, max_epochs=5)
    assert engine2.state.iteration == 50  # resumed at iteration 30 of the schedule
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_old_checkpoint_removed_only_after_new_one(tmp_path, monkeypatch):
    saver = _saver(tmp_path, _net(), save_interval=1, n_saved=1)
    saver.interval_completed(saver.engine)
    first = tmp_path / "checkpoint_epoch=3.pt"
    assert first.is_file()
    saver.engine.state.epoch = 4

    def failing_write(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(WriteError, match="checkpoint_epoch=4.pt.*No space left"):
        saver.interval_completed(saver.engine)
    monkeypatch.undo()
    assert first.is_file() and checkpoint_problem(first) is None  # the previous checkpoint survived
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=3.pt"]  # and no temporary file is left
    saver.interval_completed(saver.engine)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=4.pt"]


def test_write_error_names_file_and_cause_and_keeps_old_file(tmp_path):
    """A real file-system limit (RLIMIT_FSIZE, as a full disk: the write fails part-way) in a subprocess."""
    target = tmp_path / "checkpoint_final.pt"
    atomic_torch_save({"trainer": {"epoch": 1}}, target)
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from vqseg_bundle.engines import TrainerCheckpointSaver
        from ignite.engine import Engine
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        net = torch.nn.Linear(1000, 1000)  # 4 MB of weights
        saver = TrainerCheckpointSaver({str(tmp_path)!r}, {{"network": net}})
        engine = Engine(lambda e, b: None)
        saver.attach(engine)
        saver.completed(engine)
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert str(target) in last and "File too large" in last and "MiB free" in last, proc.stderr[-2000:]
    assert target.read_bytes() == before  # the previous checkpoint is untouched
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_final.pt"]


def test_permission_error_names_file(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(WriteError) as err:
        atomic_torch_save({"a": 1}, blocker / "model.pt")
    assert str(blocker / "model.pt") in str(err.value)


def _write_model(tmp_path: Path, net: torch.nn.Module, score: float, settings=None) -> BestModelSaver:
    saver = BestModelSaver(tmp_path, net, settings=settings or {"image_size": 64})
    saver(_Evaluator(score))
    return saver


def test_worse_model_never_replaces_recorded_better_one(tmp_path, caplog):
    good = _net()
    with caplog.at_level(logging.INFO):
        _write_model(tmp_path, good, 0.83)
    assert "best model written" in caplog.text and str(tmp_path / "model.pt") in caplog.text and "0.83" in caplog.text
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["metric"]["value"] == 0.83 and record["settings"] == {"image_size": 64}
    before = (tmp_path / "model.pt").read_bytes()
    # a fresh run (a new saver) whose validations are worse: model.pt stays
    fresh = BestModelSaver(tmp_path, _net(), settings={"image_size": 64})
    fresh(_Evaluator(0.0, 1))
    fresh(_Evaluator(0.5, 2))
    assert (tmp_path / "model.pt").read_bytes() == before
    fresh(_Evaluator(0.9, 3))
    assert (tmp_path / "model.pt").read_bytes() != before
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["metric"] == {"name": "val_mean_dice", "value": 0.9, "epoch": 3}
    assert record["previous"]["metric"]["value"] == 0.83


def test_summary_names_the_model_and_where_it_came_from(tmp_path):
    first = _write_model(tmp_path, _net(), 0.83)
    said = first.summary()
    assert str(tmp_path / "model.pt") in said and "0.8300" in said and "epoch 1 of this run" in said
    assert str(tmp_path / "model.json") in said
    worse = BestModelSaver(tmp_path, _net(), settings={"image_size": 64})
    worse(_Evaluator(0.1, 1))
    assert "an earlier run" in worse.summary() and "0.8300" in worse.summary()
    empty = BestModelSaver(tmp_path / "none", _net())
    assert "no model was written" in empty.summary()


def test_unscored_existing_model_is_kept_aside(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "model.pt")  # no settings file: score unknown
    before = (tmp_path / "model.pt").read_bytes()
    _write_model(tmp_path, _net(), 0.1)
    backups = [f for f in os.listdir(tmp_path) if f.startswith("model.unscored-")]
    assert len(backups) == 1 and (tmp_path / backups[0]).read_bytes() == before


DEMO = {"data": "/bundle/.cache/demo_data/dataset.json", "volumes": 4, "sha256": "d" * 64}
ACDC = {"data": "/data/ACDC_nifti/dataset.json", "volumes": 20, "sha256": "a" * 64}


def _model_saver(folder: Path, data, keep_better: bool = True) -> BestModelSaver:
    return BestModelSaver(folder, _net(), settings={"image_size": 64}, keep_better=keep_better, validation_data=data)


def test_model_validated_on_other_data_is_moved_aside_not_compared(tmp_path, caplog):
    """Issue 23 item 3: after the demo training, a run on ACDC in the same bundle folder wrote nothing
    ("models/model.pt kept: val_mean_dice 0.0002 ... does not beat 0.9303"). Scores are compared only on the same
    validation data (the fingerprint in model.json); otherwise the old model is moved aside and the new one
    written, and the log says so, why, and names --keep_better_model / --ckpt_dir."""
    _model_saver(tmp_path, DEMO)(_Evaluator(0.9303, 10))
    demo_bytes = (tmp_path / "model.pt").read_bytes()
    assert json.loads((tmp_path / "model.json").read_text())["validation_data"] == DEMO
    acdc = _model_saver(tmp_path, ACDC)
    with caplog.at_level(logging.INFO):
        acdc(_Evaluator(0.0002, 1))
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["metric"]["value"] == 0.0002 and record["validation_data"] == ACDC and record["previous"] is None
    aside = [f for f in os.listdir(tmp_path) if f.startswith("model.replaced-") and f.endswith(".pt")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == demo_bytes  # kept, never deleted
    old = json.loads((tmp_path / aside[0]).with_suffix(".json").read_text())
    assert old["metric"]["value"] == 0.9303 and old["validation_data"] == DEMO
    said = caplog.text
    assert "other validation data" in said and "4 volumes of /bundle/.cache/demo_data" in said
    assert "20 volumes of /data/ACDC_nifti" in said and "0.9303" in said and aside[0] in said
    assert "--keep_better_model" in said and "--ckpt_dir" in said
    assert "this run" in acdc.summary() and "0.0002" in acdc.summary()
    # the ACDC run goes on comparing with its own best
    acdc(_Evaluator(0.0001, 2))
    assert json.loads((tmp_path / "model.json").read_text())["metric"]["epoch"] == 1


def test_same_validation_data_is_still_compared(tmp_path, caplog):
    _model_saver(tmp_path, DEMO)(_Evaluator(0.93, 10))
    before = (tmp_path / "model.pt").read_bytes()
    again = _model_saver(tmp_path, dict(DEMO, data="/elsewhere/dataset.json"))  # the same files in another folder
    with caplog.at_level(logging.INFO):
        again(_Evaluator(0.5, 1))
    assert (tmp_path / "model.pt").read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.startswith("model.replaced-")]
    assert "same validation data" in caplog.text and "does not beat 0.9300" in caplog.text
    assert "--keep_better_model" in caplog.text and "--ckpt_dir" in caplog.text
    again(_Evaluator(0.95, 2))
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["metric"]["value"] == 0.95 and record["previous"]["metric"]["value"] == 0.93


def test_model_recorded_without_a_fingerprint_is_moved_aside(tmp_path, caplog):
    _model_saver(tmp_path, None)(_Evaluator(0.93, 10))  # a model.json written before fingerprints
    with caplog.at_level(logging.INFO):
        _model_saver(tmp_path, ACDC)(_Evaluator(0.1, 1))
    assert json.loads((tmp_path / "model.json").read_text())["metric"]["value"] == 0.1
    assert len([f for f in os.listdir(tmp_path) if f.startswith("model.replaced-") and f.endswith(".pt")]) == 1
    assert "names no validation data" in caplog.text


def test_model_on_other_data_stays_until_this_run_writes_one(tmp_path):
    """The old model is moved only when the new one is written: a run with no finite score leaves it in place,
    and its summary says it is not this run's nor comparable."""
    _model_saver(tmp_path, DEMO)(_Evaluator(0.93, 10))
    before = (tmp_path / "model.pt").read_bytes()
    broken = _model_saver(tmp_path, ACDC)
    broken(_Evaluator(float("nan"), 1))
    assert (tmp_path / "model.pt").read_bytes() == before
    assert "no model was written" in broken.summary() and "not comparable" in broken.summary()


def test_non_finite_model_is_never_written(tmp_path, caplog):
    _write_model(tmp_path, _net(), 0.3)
    before = (tmp_path / "model.pt").read_bytes()
    bad = _net()
    bad[1].running_var.fill_(float("nan"))
    with caplog.at_level(logging.WARNING):
        _write_model(tmp_path, bad, 0.99)
    assert "not finite" in caplog.text and "running_var" in caplog.text
    assert (tmp_path / "model.pt").read_bytes() == before
    # a non-finite score is not a better one either
    _write_model(tmp_path, _net(), float("nan"))
    assert (tmp_path / "model.pt").read_bytes() == before


def test_skipped_step_restores_batchnorm_buffers():
    """A labeled batch with NaN pixels: its forward puts NaN into the BatchNorm running statistics and the loss
    is NaN; the step is skipped and the buffers are as before it (they were not, before issue 15)."""
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    trainer, net, _, _ = make_trainer(epoch_length=3, ema=False)
    before: dict = {}

    def poison(engine):
        if engine.state.iteration == 2:
            before.update({k: v.clone() for k, v in net.named_buffers()})
            batch = dict(engine.state.batch)
            batch["image"] = torch.full_like(torch.as_tensor(batch["image"]), float("nan"))
            engine.state.batch = batch

    trainer.add_event_handler(Events.ITERATION_STARTED, poison)
    after: dict = {}
    forward_nan = []
    trainer.add_event_handler(
        IterationEvents.FORWARD_COMPLETED,
        lambda e: (
            forward_nan.append(any(not torch.isfinite(b).all() for b in net.buffers() if b.is_floating_point()))
            if e.state.iteration == 2
            else None
        ),
    )
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED,
        lambda e: after.update({k: v.clone() for k, v in net.named_buffers()}) if e.state.iteration == 2 else None,
    )
    trainer.run()
    assert forward_nan == [True]  # the forward did poison the statistics
    assert int(trainer.state.output[0]["skipped_steps"]) == 1
    for k, v in before.items():
        assert torch.equal(after[k], v), f"buffer {k} not restored by the skipped step"
    assert all(torch.isfinite(b).all() for b in net.buffers() if b.is_floating_point())


def test_terminate_on_nan_fails_the_run():
    losses = iter([1.0, float("nan"), 1.0, 1.0])
    engine = Engine(lambda e, b: [{"loss": torch.tensor(next(losses))}])
    completed = []
    TerminateOnNonFinite().attach(engine)
    engine.add_event_handler(
        Events.COMPLETED, lambda e: completed.append(e.state.iteration)
    )  # e.g. the final checkpoint
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        engine.run([0] * 4, max_epochs=1)
    assert completed == [2]  # the completion handlers (final checkpoint) ran first


def test_bundle_cli_terminate_on_nan_exits_non_zero(tmp_path):
    """The CLI with a learning rate that makes the loss non-finite at once."""
    sys.path.insert(0, str(ROOT / "tests" / "bundle"))
    from bundle_helpers import TINY, TRAIN, cli_args, run_cli

    demo = tmp_path / "demo"
    over = {
        **TINY,
        "epochs": 1,
        "bundle_root": str(tmp_path),
        "data_cache_dir": str(demo),
        "lr": 1e30,
        "terminate_on_nan": True,
        "momentum": 0.0,
    }
    proc = run_cli(["--config_file", TRAIN] + cli_args(over))
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NonFiniteLossError" in proc.stderr.strip().splitlines()[-1]


_KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from types import SimpleNamespace
from ignite.engine import Engine, Events
from vqseg_bundle.engines import BestModelSaver, TrainerCheckpointSaver
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.BatchNorm1d(600))
engine = Engine(lambda e, b: None)
ckpt = TrainerCheckpointSaver({ckpt!r}, {{"network": net}}, n_saved=1)
ckpt.attach(engine)
best = BestModelSaver({models!r}, net, settings={{"image_size": 64}})
print("ready", flush=True)
score = 0.0
while True:
    engine.state.epoch += 1
    score += 0.001
    with torch.no_grad():
        net[0].weight.add_(0.01)
    best(SimpleNamespace(state=SimpleNamespace(metrics={{"val_mean_dice": score}}, epoch=engine.state.epoch,
                                               key_metric_name="val_mean_dice")))
    ckpt.interval_completed(engine)
    ckpt.completed(engine)
"""


def test_kill_during_saves_always_leaves_loadable_files(tmp_path):
    """SIGKILL a process that saves model.pt and checkpoints in a loop, after a random delay (6 tries): a
    loadable best model (described by its settings file) and a resumable checkpoint always remain."""
    from vqseg_bundle.inferers import read_model_record

    rng = random.Random(15)
    for attempt in range(6):
        run_dir = tmp_path / f"try{attempt}"
        models, ckpt = run_dir / "models", run_dir / "checkpoints"
        script = _KILL_SCRIPT.format(root=str(ROOT), ckpt=str(ckpt), models=str(models))
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while not (models / "model.pt").exists() and time.time() < deadline:  # at least one save done
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
        assert set(state) >= {"0.weight", "1.running_var"}
        record = read_model_record(models / "model.pt")  # a settings entry matches the weights on disk
        assert record["settings"] == {"image_size": 64}
        assert resume_path(True, ckpt) is not None
