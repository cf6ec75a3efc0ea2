"""The trainer inside MONAI's machinery: CommonKeys output, prepare_batch callables, amp / scaler, StepGuard."""

from __future__ import annotations

import logging

import pytest
import torch
from engine_helpers import SIZE, make_trainer
from monai.handlers import StatsHandler, from_engine
from monai.utils import CommonKeys
from vqseg_bundle.engines import (
    NAN_POLICIES,
    PrepareLabeledBatch,
    PrepareUnlabeledBatch,
    SemiSupervisedForward,
    StepGuard,
    unwrap_model,
)


def test_output_has_monai_keys_and_stock_stats_handler_logs_loss():
    logged: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    logger = logging.getLogger("vqseg_test_stock_stats")
    logger.setLevel(logging.INFO)
    logger.addHandler(Collect())
    handler = StatsHandler(name=logger.name, tag_name="train", output_transform=from_engine(["loss"], first=True))
    trainer, net, _, _ = make_trainer(handlers=[handler])
    trainer.run()
    out = trainer.state.output[0]
    b = 2
    assert out[CommonKeys.IMAGE].shape == (b, 1, SIZE, SIZE) and out[CommonKeys.IMAGE].dtype == torch.float32
    assert out[CommonKeys.LABEL].shape == (b, SIZE, SIZE) and out[CommonKeys.LABEL].dtype == torch.long
    assert out[CommonKeys.PRED].shape == (b, unwrap_model(net).num_classes, SIZE, SIZE)
    assert not out[CommonKeys.PRED].requires_grad
    assert out[CommonKeys.LOSS].ndim == 0 and not out[CommonKeys.LOSS].requires_grad
    assert "loss_sup" in out and "skipped_steps" in out
    assert sum("Iter: " in m and "train: " in m for m in logged) == 2


def test_prepare_batch_callables_are_monai_style_and_replaceable():
    image = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    label = torch.randint(0, 3, (2, 1, 8, 8))
    x, y = PrepareLabeledBatch()({"image": image, "label": label}, "cpu", False)
    assert x.dtype == torch.float32 and y.shape == (2, 8, 8) and y.dtype == torch.long
    x_cl, _ = PrepareLabeledBatch(channels_last=True)({"image": image, "label": label}, "cpu")
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    unl = PrepareUnlabeledBatch()({"image": image, "image_s1": image, "image_s2": image}, "cpu")
    assert sorted(unl) == ["image", "image_s1", "image_s2"] and all(v.dtype == torch.float32 for v in unl.values())
    with pytest.raises(ValueError, match="image_s1"):
        PrepareUnlabeledBatch()({"image": image}, "cpu")

    calls = []

    class Counting(PrepareLabeledBatch):
        def __call__(self, batchdata, device=None, non_blocking=False, **kwargs):
            calls.append(device)
            return super().__call__(batchdata, device, non_blocking, **kwargs)

    trainer, *_ = make_trainer(prepare_batch=Counting(), prepare_unlabeled_batch=PrepareUnlabeledBatch())
    trainer.run()
    assert len(calls) == 2 and trainer.prepare_batch is not None


@pytest.mark.parametrize("dtype, scaler", [("bfloat16", False), ("float16", True)])
def test_amp_uses_monai_attributes(dtype, scaler):
    trainer, *_ = make_trainer(amp=True, amp_dtype=dtype)
    assert trainer.amp is True and trainer.amp_kwargs["dtype"] == getattr(torch, dtype)
    assert (trainer.scaler is not None) == scaler
    kept = trainer.scaler
    trainer.run()
    assert trainer.scaler is kept  # MONAI's Trainer.run would replace it by a CUDA float16 scaler


def test_step_guard_undoes_a_non_finite_step_and_counts_it():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    guard = StepGuard(net, opt, policy="skip")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    buffers = guard.snapshot_buffers()
    loss = net(torch.rand(4, 3)).sum() * float("nan")
    loss.backward()
    grad_norm = guard.step(loss, buffers)
    assert not torch.isfinite(grad_norm)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert int(guard.skipped) == 1
    buffers = guard.snapshot_buffers()
    opt.zero_grad()
    loss = net(torch.rand(4, 3)).pow(2).sum()
    loss.backward()
    guard.step(loss, buffers)
    assert int(guard.skipped) == 1
    assert not torch.equal(before["0.weight"], net.state_dict()["0.weight"])
    with pytest.raises(ValueError, match="nan_policy"):
        StepGuard(net, opt, policy="raise")
    with pytest.raises(ValueError, match="grad_clip_norm"):
        StepGuard(net, opt, grad_clip_norm=0.0)
    assert NAN_POLICIES == ("skip", "none")


def test_unwrap_model_sees_through_the_training_wrappers():
    net = torch.nn.Linear(2, 2)
    net.forward_train = lambda *a, **k: None  # SemiSupervisedForward needs a forward_train
    step = SemiSupervisedForward(net)
    assert unwrap_model(step) is net
    assert unwrap_model(torch.nn.DataParallel(step)) is net
    assert unwrap_model(net) is net
