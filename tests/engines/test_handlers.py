"""Small engine helpers: output selection, per-class Dice, checkpoint lookup, parameter groups."""

from __future__ import annotations

import os
import time

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from vqseg_bundle.engines import (
    backbone_param_groups,
    latest_checkpoint,
    output_dict,
    per_class_dice_metrics,
    resume_path,
    scalar_output,
)


def test_scalar_output_and_monai_from_engine():
    out = [{"loss": torch.tensor(1.5), "lr": 0.01, "vec": torch.ones(3), "flag": True}]
    assert output_dict(out) is out[0]
    assert set(scalar_output(out)) == {"loss", "lr"}
    # MONAI's stock output transform (used by --tracking mlflow) reads the loss of the decollated form
    assert float(from_engine(["loss"], first=True)(out)) == 1.5
    assert scalar_output(None) == {}


def test_per_class_dice_reads_one_channel_each():
    metrics = per_class_dice_metrics(3, ["a", "b"])
    assert set(metrics) == {"val_dice_a", "val_dice_b"}
    pred = torch.zeros(3, 4, 4)
    pred[1, :2] = 1  # class a predicted on the top half
    pred[0, 2:] = 1
    label = torch.zeros(3, 4, 4)
    label[1, :2] = 1
    label[2, 2:] = 1  # class b only in the label
    output = [{"pred": pred, "label": label}]
    engine = Engine(lambda e, batch: output)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run([0])
    assert engine.state.metrics["val_dice_a"] == pytest.approx(1.0)
    assert engine.state.metrics["val_dice_b"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="foreground"):
        per_class_dice_metrics(4, ["a"])


def test_latest_checkpoint_and_resume_path(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert resume_path(False, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resume_path(True, tmp_path)
    a, b = tmp_path / "checkpoint_epoch=1.pt", tmp_path / "checkpoint_epoch=2.pt"
    torch.save({"trainer": {"epoch": 1}}, a)  # resume_path checks that a checkpoint loads
    torch.save({"trainer": {"epoch": 2}}, b)
    old = time.time() - 100
    os.utime(b, (old, old))
    assert latest_checkpoint(tmp_path) == str(a)  # most recent file wins
    assert resume_path(True, tmp_path) == str(a)
    assert resume_path(str(b), tmp_path) == str(b)
    with pytest.raises(FileNotFoundError):
        resume_path(str(tmp_path / "nope.pt"), tmp_path)
    # the bundle CLI passes `--resume true` / `--resume false` as strings
    assert resume_path("true", tmp_path) == str(a)
    assert resume_path("False", tmp_path) is None


def test_backbone_param_groups():
    net = torch.nn.Module()
    net.backbone = torch.nn.Linear(2, 2)
    net.head = torch.nn.Linear(2, 2)
    groups = backbone_param_groups(net, lr=1e-3, backbone_lr=1e-5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 1e-5 and by_name["head"]["lr"] == 1e-3
    assert len(by_name["backbone"]["params"]) == 2 and len(by_name["head"]["params"]) == 2
    opt = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    with pytest.raises(ValueError, match="starts with"):
        backbone_param_groups(net, 1e-3, 1e-5, backbone_prefixes=("encoder.",))


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_is_drawn_on_a_terminal_only(monkeypatch, tty):
    import sys

    from vqseg_bundle.engines.handlers import ProgressBarHandler

    class Stream:
        def isatty(self):
            return tty

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stream())
    engine = Engine(lambda e, b: {"loss": 1.0})
    before = sum(len(v) for v in engine._event_handlers.values())
    ProgressBarHandler(interval=1).attach(engine)
    attached = sum(len(v) for v in engine._event_handlers.values()) - before
    assert (attached > 0) == tty


def test_progress_bar_advances_every_iteration_and_reads_values_every_interval():
    """Issue 23 item 7: with log_every 20 and an epoch of 20 iterations the bar was first drawn after 20 of them.
    Now it advances at every iteration; the values shown are read from the device every `interval` only."""
    from vqseg_bundle.engines.handlers import ProgressBarHandler

    reads = []

    class DeviceValue:
        def __float__(self):
            reads.append(1)
            return 0.5

    engine = Engine(lambda e, b: {"loss": DeviceValue()})
    handler = ProgressBarHandler(interval=20, terminal_only=False)
    handler.attach(engine)
    seen = {}
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.update({e.state.iteration: getattr(handler.bar.pbar, "n", None)})
    )
    engine.run(range(20), max_epochs=1)
    assert seen[1] == 1 and seen[5] == 5 and seen[19] == 19  # the bar moves before the epoch ends
    assert len(reads) <= 2  # the first iteration and iteration 20


def test_final_validation_after_a_run_shorter_than_val_interval():
    """Issue 23 item 4: with fewer epochs than val_interval nothing was validated, so no model was written. The
    final validation runs after the last iteration unless the periodic one already validated that epoch, and not
    after a run stopped early."""
    from vqseg_bundle.engines import FinalValidation

    class Validator:
        def __init__(self):
            from types import SimpleNamespace

            self.state, self.calls = SimpleNamespace(epoch=0, iteration=0), []

        def run(self, global_epoch):
            self.calls.append(global_epoch)
            self.state.epoch, self.state.iteration = global_epoch, 3

    def train(epochs, interval, stop_at=None):
        validator = Validator()
        engine = Engine(lambda e, b: None)
        # what MONAI's ValidationHandler(interval, epoch_level=True) does
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=interval), lambda e: validator.run(e.state.epoch))
        FinalValidation(validator).attach(engine)
        if stop_at is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        engine.run(range(4), max_epochs=epochs)
        return validator.calls

    assert train(epochs=1, interval=5) == [1]  # a short run validates once, at its end
    assert train(epochs=5, interval=2) == [2, 4, 5]  # the last epoch too
    assert train(epochs=4, interval=2) == [2, 4]  # already validated: not twice
    assert train(epochs=3, interval=5, stop_at=6) == []  # stopped early (terminate_on_nan): not validated
