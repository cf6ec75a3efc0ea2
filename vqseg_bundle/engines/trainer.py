"""The VQ-Seg semi-supervised trainer: a MONAI ``SupervisedTrainer`` with a weak-to-strong iteration.

MONAI has no semi-supervised trainer, so ``_iteration`` is written here; everything around it
(ignite engine, events, handlers, checkpointing, metrics) is MONAI's, and the objective is a
component of :mod:`vqseg_bundle.losses` (:class:`~vqseg_bundle.losses.SemiSupervisedLoss`: every weight,
threshold and ramp-up is there, none here). One iteration:

1. one labeled batch (the engine's own data loader) and one unlabeled batch (a second loader cycling on its
   own, :class:`~vqseg_bundle.engines.loaders.InfiniteLoader`), plus a second unlabeled batch as CutMix
   partners when ``cutmix_partner="second_batch"`` (UniMatch V1);
2. CutMix boxes are drawn and the two strong views mixed (pseudo-labels and confidences follow with the same
   boxes once they exist);
3. the student runs in **one** call of :class:`SemiSupervisedForward` (so DDP sees one forward per backward):
   ``forward_train`` of ``cat(labeled, weak)`` (the weak view only when a stream needs it; with
   ``perturbed_stream`` "weak" the clean and feature-perturbed maps are decoded together, UniMatch's "fp"
   stream) and of the two strong views (perturbed when ``perturbed_stream`` is "strong", VQ-Seg's code);
4. pseudo-labels (argmax, confidence = max softmax) come from the EMA teacher's plain forward of the weak view
   (``pseudo_labeler="teacher"``) or from the student's own clean train-mode prediction of it, with the
   CutMix partners labeled by the student in eval mode (``"student"``, UniMatch V1, no EMA in the loop);
5. the loss module composes the terms; backward, optional gradient clipping, optimizer step guarded against
   non-finite values.

When no loss term reads the unlabeled batch (labeled-only training) steps 2-4 and the unlabeled branch are
skipped.

Events fire in MONAI's order: ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
``MODEL_COMPLETED``. ``engine.state.output`` is ``[dict]``, MONAI's decollated form (so that the stock
``from_engine(["loss"], first=True)`` of ``StatsHandler`` / ``MLFlowHandler`` works); the dict holds
detached scalar tensors only (``"loss"`` and every term, ``"mask_ratio"``, ``"grad_norm"``,
``"skipped_steps"``, ``"lr"``): nothing in the iteration reads a value back to the host, so logging
handlers decide how often to synchronise (``iteration_log``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from torch.optim import Optimizer

from vqseg_bundle.engines.ema import _unwrap
from vqseg_bundle.engines.loaders import InfiniteLoader
from vqseg_bundle.losses import SemiSupervisedLoss, pseudo_labels_from_logits
from vqseg_bundle.transforms.augment import STRONG_KEYS
from vqseg_bundle.transforms.cutmix import BatchCutMix

__all__ = [
    "CUTMIX_PARTNERS",
    "NAN_POLICIES",
    "PERTURBED_STREAMS",
    "PSEUDO_LABELERS",
    "STRONG_BN_STATS",
    "SemiSupervisedForward",
    "SemiSupervisedTrainer",
    "frozen_batchnorm_stats",
]

logger = logging.getLogger(__name__)

NAN_POLICIES = ("skip", "none")
#: who labels the weak view: the EMA teacher, or the student itself (UniMatch V1)
PSEUDO_LABELERS = ("teacher", "student")
#: which unlabeled stream the network's feature perturbation (QPM / dropout) acts on
PERTURBED_STREAMS = ("strong", "weak", "both")
#: where each strong view's CutMix partner comes from
CUTMIX_PARTNERS = ("batch", "second_batch")
#: whether the strong-view forward updates BatchNorm running statistics
STRONG_BN_STATS = ("update", "frozen")
_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with the batch's statistics (train mode) but do not update
    their running statistics inside the block (momentum 0 leaves ``running_mean / var`` unchanged)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class SemiSupervisedForward(nn.Module):
    """The student's training forwards of one step as a single ``forward`` call.

    DDP synchronises gradients through hooks set up in ``forward``; calling ``forward_train`` on a
    wrapped network twice would bypass it (or trip "marked ready twice"). Wrap this module, not the
    network, in ``DistributedDataParallel`` (``configs/multi_gpu_train.yaml`` does).
    """

    def __init__(self, network: nn.Module) -> None:
        """
        Args:
            network: a VQ-Seg network with ``forward_train(x, perturb, generator, align_size, return_clean)``.
        """
        super().__init__()
        if not callable(getattr(network, "forward_train", None)):
            raise ValueError(f"network must have a forward_train method, got {type(network).__name__}")
        self.network = network

    def forward(
        self,
        labeled: torch.Tensor,
        weak: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        perturb_weak: bool = False,
        perturb_strong: bool = True,
        freeze_strong_bn: bool = False,
        generator: torch.Generator | None = None,
        align_size: Sequence[int] | None = None,
    ) -> tuple[Any, Any]:
        """
        Args:
            labeled: ``(B_l, C, H, W)`` labeled images, never perturbed.
            weak: ``(B_u, C, H, W)`` weak views run with the labeled batch (``cat(labeled, weak)``), or ``None``.
            strong: ``(2 B_u, C, H, W)`` the two strong views concatenated, or ``None``.
            perturb_weak: also decode the feature-perturbed ``cat(labeled, weak)`` (its ``seg_logits``; the
                clean logits are then ``clean_seg_logits``).
            perturb_strong: apply the network's perturbation to the strong views.
            freeze_strong_bn: the strong-view forward leaves BatchNorm running statistics unchanged.
            generator: random generator for the perturbation (on the inputs' device).
            align_size: ``(h, w)`` of the foundation model's feature grid, or ``None`` without PFA.

        Returns:
            ``(VQSegOutput of cat(labeled, weak), VQSegOutput of strong or None)``; the first always has
            ``clean_seg_logits``.
        """
        first = labeled if weak is None else torch.cat([labeled, weak])
        out_lw = self.network.forward_train(
            first, perturb=perturb_weak, generator=generator, align_size=align_size, return_clean=True
        )
        if strong is None:
            return out_lw, None
        with frozen_batchnorm_stats(self.network) if freeze_strong_bn else contextlib.nullcontext():
            out_s = self.network.forward_train(
                strong, perturb=perturb_strong, generator=generator, align_size=align_size
            )
        return out_lw, out_s


class SemiSupervisedTrainer(SupervisedTrainer):
    """Weak-to-strong semi-supervised trainer (EMA teacher or self-labeling student, CutMix, QPM / dropout
    streams, reconstruction, PFA).

    ``self.network`` is the plain student network (for handlers, checkpoints and the EMA);
    ``self.student_step`` the module actually called (a :class:`SemiSupervisedForward`, possibly
    inside ``DistributedDataParallel`` or ``torch.compile``). The EMA update itself is a handler
    (:class:`~vqseg_bundle.engines.ema.EMATeacher`) so that its schedule is configured in YAML.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        unlabeled_data_loader: Iterable,
        network: nn.Module,
        teacher: nn.Module,
        optimizer: Optimizer,
        epoch_length: int,
        loss: SemiSupervisedLoss | None = None,
        cutmix: BatchCutMix | None = None,
        foundation_model: nn.Module | None = None,
        pseudo_labeler: str = "teacher",
        perturbed_stream: str = "strong",
        cutmix_partner: str = "batch",
        strong_bn_stats: str = "update",
        perturb: bool = True,
        grad_clip_norm: float | None = None,
        nan_policy: str = "skip",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        channels_last: bool = False,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        seed: int = 0,
        non_blocking: bool = True,
        inferer: Inferer | None = None,
        train_handlers: Sequence | None = None,
        optim_set_to_none: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            device: where the step runs.
            max_epochs: number of epochs; one epoch is ``epoch_length`` iterations.
            train_data_loader: labeled loader, items ``{"image": (B, 1, S, S), "label": (B, 1, S, S)}``;
                cycled on its own (wrapped in ``InfiniteLoader`` unless it already is one).
            unlabeled_data_loader: unlabeled loader, items ``{"image", "image_s1", "image_s2"}``, each
                ``(B_u, 1, S, S)``; cycled on its own.
            network: the student: a plain VQ-Seg network, or ``DistributedDataParallel`` wrapping a
                :class:`SemiSupervisedForward` of it.
            teacher: EMA teacher (``make_teacher(network)``); used in eval mode, through ``forward`` only.
            optimizer: optimizer of the student's parameters.
            epoch_length: iterations per epoch (required: the loaders are endless).
            loss: the objective (default ``SemiSupervisedLoss()``: the VQ-Seg paper's weights, CE pseudo-labels).
            cutmix: CutMix of the strong views (``None``: no CutMix).
            foundation_model: frozen FM ``(B, C, H, W) -> (B, C_fm, h, w)`` for PFA, or ``None``
                (no alignment loss; the network then needs no adapter).
            pseudo_labeler: ``"teacher"`` (EMA teacher, eval mode) or ``"student"`` (the student's clean
                train-mode prediction of the weak view; CutMix partners labeled by the student in eval mode).
            perturbed_stream: ``"strong"`` (perturb the strong views: VQ-Seg's code, UniMatch V2), ``"weak"``
                (a separate feature-perturbed weak stream, UniMatch V1's "fp"; needs the loss's ``fp_weight``)
                or ``"both"``.
            cutmix_partner: ``"batch"`` (a permutation of the same batch) or ``"second_batch"`` (a second
                unlabeled batch, UniMatch V1).
            strong_bn_stats: ``"update"`` or ``"frozen"``: the strong-view forward does not update BatchNorm
                running statistics (so that they, and the teacher that copies them, come from clean views).
            perturb: perturb the student (QPM or the network's configured mode) at all.
            grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
            nan_policy: ``"skip"``: a step whose loss or gradient norm is not finite leaves parameters
                and optimizer state unchanged, decided on the device without host sync, counted in
                ``output["skipped_steps"]`` and logged by :class:`~vqseg_bundle.engines.handlers.NaNSkipLogger`;
                ``"none"``: no guard (pair with ignite's ``TerminateOnNan`` to stop instead).
            amp: autocast the forward passes (``amp_dtype``); bf16 needs no gradient scaler.
            amp_dtype: ``"bfloat16"`` or ``"float16"`` (float16 uses ``torch.amp.GradScaler``).
            channels_last: convert inputs (and the networks) to channels-last memory format.
            compile: ``torch.compile`` the student step and the teacher forward.
            compile_kwargs: arguments of ``torch.compile``.
            seed: seed of the trainer's device random generator (CutMix boxes, QPM draws).
            non_blocking: asynchronous host-to-device copies.
            inferer: kept for MONAI's ``train#inferer`` property; the iteration calls the networks directly.
            train_handlers: ignite / MONAI handlers.
            optim_set_to_none: ``optimizer.zero_grad(set_to_none=...)``.
            kwargs: other ``SupervisedTrainer`` arguments (``key_train_metric``, ``event_names``, ...).
        """
        loss = loss if loss is not None else SemiSupervisedLoss()
        if not isinstance(loss, SemiSupervisedLoss):
            raise ValueError(f"loss must be a vqseg_bundle.losses.SemiSupervisedLoss, got {type(loss).__name__}")
        for name, value, allowed in (
            ("pseudo_labeler", pseudo_labeler, PSEUDO_LABELERS),
            ("perturbed_stream", perturbed_stream, PERTURBED_STREAMS),
            ("cutmix_partner", cutmix_partner, CUTMIX_PARTNERS),
            ("strong_bn_stats", strong_bn_stats, STRONG_BN_STATS),
            ("nan_policy", nan_policy, NAN_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {tuple(_AMP_DTYPES)}, got {amp_dtype!r}")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm}")
        if epoch_length is None or int(epoch_length) < 1:
            raise ValueError(f"epoch_length must be a positive int (the loaders cycle forever), got {epoch_length}")
        if kwargs.get("decollate"):
            raise ValueError("decollate must be False: the output holds scalar loss terms, not batches")
        kwargs["decollate"] = False
        if cutmix is not None and cutmix.mode == "monai" and (pseudo_labeler != "teacher" or cutmix_partner != "batch"):
            raise ValueError(
                "cutmix mode 'monai' mixes within the batch before the student runs: it needs "
                "pseudo_labeler='teacher' and cutmix_partner='batch'; use mode 'box'"
            )

        student_step = network if isinstance(network, nn.parallel.DistributedDataParallel) else None
        plain = _unwrap(network)
        if student_step is not None and not isinstance(student_step.module, SemiSupervisedForward):
            raise ValueError(
                "a DistributedDataParallel network must wrap SemiSupervisedForward(network), e.g. "
                "DistributedDataParallel(vqseg_bundle.engines.SemiSupervisedForward(net)); got DDP of "
                f"{type(student_step.module).__name__}"
            )
        if not callable(getattr(plain, "forward_train", None)):
            raise ValueError(f"network must be a VQ-Seg network with forward_train, got {type(plain).__name__}")
        has_perturbation = bool(perturb) and getattr(plain, "perturbation", "none") != "none"
        streams = loss.pseudo_label_streams
        if has_perturbation and perturbed_stream in ("weak", "both") and "fp" not in streams:
            raise ValueError(
                f"perturbed_stream={perturbed_stream!r} perturbs a weak 'fp' stream, but the loss gives it no "
                "weight: set fp_weight > 0 (UniMatch: 0.5) or perturbed_stream='strong'"
            )
        if has_perturbation and perturbed_stream in ("weak", "both") and plain.perturbation == "complementary_dropout":
            raise ValueError("complementary_dropout pairs the two strong views: use perturbed_stream='strong'")
        if student_step is None:
            student_step = SemiSupervisedForward(plain)
        if channels_last:
            plain.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        labeled_loader = (
            train_data_loader if isinstance(train_data_loader, InfiniteLoader) else InfiniteLoader(train_data_loader)
        )
        # amp is handled here (bf16 on any device); MONAI's own amp means CUDA float16 + GradScaler
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=labeled_loader,
            network=plain,
            optimizer=optimizer,
            loss_function=loss,
            epoch_length=int(epoch_length),
            non_blocking=non_blocking,
            inferer=inferer,
            train_handlers=train_handlers,
            amp=False,
            optim_set_to_none=optim_set_to_none,
            compile=False,
            **kwargs,
        )
        if compile:
            student_step = torch.compile(student_step, **(compile_kwargs or {}))
        self.student_step = student_step
        self.teacher = teacher
        self._teacher_forward = torch.compile(teacher, **(compile_kwargs or {})) if compile else teacher
        self.unlabeled_loader = (
            unlabeled_data_loader
            if isinstance(unlabeled_data_loader, InfiniteLoader)
            else InfiniteLoader(unlabeled_data_loader)
        )
        self._unlabeled_iter: Iterator | None = None
        self.cutmix = cutmix
        self.foundation_model = foundation_model.eval() if foundation_model is not None else None
        if self.foundation_model is not None:
            for p in self.foundation_model.parameters():
                p.requires_grad_(False)
        self.pseudo_labeler = pseudo_labeler
        self.perturbed_stream = perturbed_stream
        self.cutmix_partner = cutmix_partner
        self.strong_bn_stats = strong_bn_stats
        self.uses_unlabeled = loss.uses_unlabeled(plain, self.foundation_model is not None)
        self.perturb = bool(perturb)
        self.grad_clip_norm = grad_clip_norm
        self.nan_policy = nan_policy
        self.use_amp = bool(amp)
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        self.channels_last = bool(channels_last)
        self.seed = int(seed)
        dev = torch.device(device)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(self.seed)
        self.grad_scaler = torch.amp.GradScaler(dev.type) if self.use_amp and self.amp_dtype == torch.float16 else None
        self._skipped = torch.zeros((), dtype=torch.long, device=dev)
        self.add_event_handler(Events.STARTED, self._start_unlabeled)

    # ------------------------------------------------------------------ helpers
    def _start_unlabeled(self, engine: Engine) -> None:
        # resumed runs re-seed the device generator with the step count, so a resume does not
        # replay the random draws of the first steps
        # and each DDP rank gets its own stream
        self.generator.manual_seed(self.seed + int(engine.state.iteration) + 1_000_003 * int(engine.state.rank))
        self._unlabeled_iter = iter(self.unlabeled_loader)

    def _to_device(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        x = torch.as_tensor(x)
        if hasattr(x, "as_tensor"):  # MetaTensor -> plain tensor (no metadata needed in training)
            x = x.as_tensor()
        x = x.to(self.state.device, dtype=dtype, non_blocking=self.non_blocking)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self):
        return torch.autocast(self.state.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def _trainable(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _guards_buffers(self) -> bool:
        return self.nan_policy == "skip" and self.grad_scaler is None

    def _snapshot_buffers(self) -> dict[str, torch.Tensor] | None:
        """Copies of the student's buffers (BatchNorm running statistics, quantizer state) before the forward,
        for :meth:`_guarded_step` to restore when the step is skipped (one fused copy, no host sync)."""
        if not self._guards_buffers():
            return None
        named = [(k, b) for k, b in _unwrap(self.network).named_buffers() if b is not None]
        floats = [(k, b) for k, b in named if b.is_floating_point()]
        snapshot = (
            dict(zip([k for k, _ in floats], torch._foreach_mul([b.detach() for _, b in floats], 1.0), strict=True))
            if floats
            else {}
        )
        snapshot.update({k: b.detach().clone() for k, b in named if not b.is_floating_point()})
        return snapshot

    def _restore_buffers(self, finite: torch.Tensor, snapshot: dict[str, torch.Tensor] | None) -> None:
        """Where the step is not finite, put the buffers of :meth:`_snapshot_buffers` back (on the device)."""
        if not snapshot:
            return
        current = []
        saved = []
        for k, b in _unwrap(self.network).named_buffers():
            old = snapshot.get(k)
            if old is not None and b is not None and old.shape == b.shape and old.device == b.device == finite.device:
                current.append(b)
                saved.append(old)
        if current:
            with torch.no_grad():
                torch._foreach_copy_(current, [torch.where(finite, b, o) for b, o in zip(current, saved, strict=True)])

    def _guarded_step(self, loss: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Optimizer step that is undone on the device when the loss or gradients are not finite.

        Args:
            loss: the step's loss.
            buffers: the student's buffers before the forward (:meth:`_snapshot_buffers`): restored too when
                the step is skipped, so that a non-finite forward leaves no non-finite BatchNorm statistics.

        Returns:
            The global gradient norm (scalar tensor, before clipping).
        """
        params = self._trainable()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if not params:
            if buffers:
                self._restore_buffers(torch.isfinite(loss.detach()), buffers)
            return torch.zeros((), device=self.state.device)
        if self.grad_clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm, foreach=True)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        if self.grad_scaler is not None:  # float16: the scaler already skips non-finite steps (with a sync)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            return grad_norm
        if self.nan_policy == "none":
            self.optimizer.step()
            return grad_norm
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        # snapshot parameters and existing optimizer state, step, then keep the old values where not finite;
        # all on the device, no host sync (a Python branch on `finite` would force one every step).
        # State held on another device (Adam's CPU step counters) is not guarded: copying it back would sync.
        dev = finite.device

        def _state_tensors() -> list[torch.Tensor]:
            return [
                t
                for p in params
                for t in self.optimizer.state.get(p, {}).values()
                if torch.is_tensor(t) and t.device == dev and t.is_floating_point()
            ]

        old_state = _state_tensors()
        old_ids = {id(t) for t in old_state}
        guarded = [p.detach() for p in params] + old_state
        backup = torch._foreach_mul(guarded, 1.0)  # one fused copy
        for p in params:  # non-finite gradients must not leak into newly created optimizer state
            p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        self.optimizer.step()
        with torch.no_grad():
            restored = [torch.where(finite, t, b) for t, b in zip(guarded, backup, strict=True)]
            torch._foreach_copy_(guarded, restored)
            new_state = [t for t in _state_tensors() if id(t) not in old_ids]
            if new_state:
                torch._foreach_copy_(new_state, [torch.where(finite, t, torch.zeros_like(t)) for t in new_state])
        self._restore_buffers(finite, buffers)
        self._skipped += (~finite).long()
        return grad_norm

    def _foundation_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return self.foundation_model(images).float()

    def _label(self, network: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-labels and confidences ``(B, H, W)`` of ``images`` from ``network``'s plain forward in
        eval mode (never perturbed); the student's train / eval mode is restored afterwards."""
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad(), self._autocast():
                logits = (self._teacher_forward if network is self.teacher else network)(images)
        finally:
            network.train(was_training)
        return pseudo_labels_from_logits(logits.float())

    def _next_unlabeled(self, engine: Engine) -> dict[str, torch.Tensor]:
        if self._unlabeled_iter is None:
            self._start_unlabeled(engine)
        batch = next(self._unlabeled_iter)
        for key in ("image", *STRONG_KEYS):
            if key not in batch:
                raise ValueError(
                    f"unlabeled batch has no {key!r} (keys: {sorted(batch)}); build the unlabeled dataset "
                    "with vqseg_bundle.transforms.unlabeled_transforms"
                )
        return {k: self._to_device(batch[k], torch.float32) for k in ("image", *STRONG_KEYS)}

    # ------------------------------------------------------------------ iteration
    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> list[dict]:  # type: ignore[override]
        """One semi-supervised step; returns ``engine.state.output``: ``[{name: detached scalar}]``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x_l = self._to_device(batchdata["image"], torch.float32)
        y_l = self._to_device(batchdata["label"], torch.long)
        if y_l.ndim == 4:
            y_l = y_l[:, 0]
        loss_fn: SemiSupervisedLoss = self.loss_function
        streams = loss_fn.pseudo_label_streams
        gen = self.generator
        b_l = x_l.shape[0]

        x_w = x_s = None
        draws: list = []
        partner_labels: tuple[torch.Tensor, torch.Tensor] | tuple[None, None] = (None, None)
        teacher_labels = None
        monai_mixed = None
        if self.uses_unlabeled:
            unl = self._next_unlabeled(engine)
            x_w = unl["image"]
            views = [unl[k] for k in STRONG_KEYS]
            partner = None
            if self.cutmix is not None and self.cutmix_partner == "second_batch":
                partner = self._next_unlabeled(engine)
            if self.pseudo_labeler == "teacher" and streams:
                teacher_labels = self._label(self.teacher, x_w)
            if self.cutmix is not None and self.cutmix.mode == "monai":
                # monai.transforms.CutMix draws its own boxes: mix images and teacher labels at once
                targets = list(teacher_labels) if teacher_labels is not None else []
                monai_mixed = [self.cutmix(v, targets, generator=gen) for v in views]
                views = [m[0] for m in monai_mixed]
            elif self.cutmix is not None:
                b_u, _, h, w = x_w.shape
                draws = [
                    self.cutmix.draw(b_u, (h, w), gen, x_w.device, second_batch=partner is not None) for _ in views
                ]
                views = [
                    self.cutmix.mix(d, v, None if partner is None else partner[k])
                    for d, v, k in zip(draws, views, STRONG_KEYS, strict=False)  # one or two strong views
                ]
                if partner is not None and streams:
                    labeler = self.teacher if self.pseudo_labeler == "teacher" else self.network
                    partner_labels = self._label(labeler, partner["image"])
            need_weak = "fp" in streams or (self.pseudo_labeler == "student" and bool(streams))
            if not need_weak:
                x_w = None
            if "strong" in streams or not streams:
                x_s = torch.cat(views)

        perturb_weak = self.perturb and x_w is not None and self.perturbed_stream in ("weak", "both")
        perturb_strong = self.perturb and self.perturbed_stream in ("strong", "both")
        first_input = x_l if x_w is None else torch.cat([x_l, x_w])
        fm_first = fm_strong = None
        align_size = None
        if self.foundation_model is not None and loss_fn.weights["align_weight"] > 0:
            fm_first = self._foundation_features(first_input)
            fm_strong = self._foundation_features(x_s) if x_s is not None else None
            align_size = tuple(fm_first.shape[-2:])

        out: dict[str, Any] = {}
        engine.state.output = [out]
        buffers = self._snapshot_buffers()
        self.student_step.train()
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            out_lw, out_s = self.student_step(
                x_l,
                x_w,
                x_s,
                perturb_weak=perturb_weak,
                perturb_strong=perturb_strong,
                freeze_strong_bn=self.strong_bn_stats == "frozen",
                generator=gen,
                align_size=align_size,
            )
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        clean = out_lw.clean_seg_logits
        labeled_logits = clean[:b_l]
        strong_targets, fp_target = [], None
        if streams:
            if teacher_labels is not None:
                pl_w, conf_w = teacher_labels
            else:  # the student labels its own weak view (clean, train mode), as UniMatch V1
                pl_w, conf_w = pseudo_labels_from_logits(clean[b_l:].detach().float())
            if "fp" in streams:
                fp_logits = out_lw.seg_logits[b_l:] if perturb_weak else clean[b_l:]
                fp_target = (fp_logits, pl_w, conf_w)
            if "strong" in streams:
                chunks = out_s.seg_logits.chunk(len(STRONG_KEYS))
                for i, logits_v in enumerate(chunks):
                    if monai_mixed is not None:
                        pl_v, conf_v = monai_mixed[i][1]
                    elif draws:
                        pl_v = self.cutmix.mix(draws[i], pl_w, partner_labels[0])
                        conf_v = self.cutmix.mix(draws[i], conf_w, partner_labels[1])
                    else:
                        pl_v, conf_v = pl_w, conf_w
                    strong_targets.append((logits_v, pl_v, conf_v))

        calls = [(first_input, out_lw, fm_first)] + ([(x_s, out_s, fm_strong)] if out_s is not None else [])
        reconstructions = [(o.reconstruction, x) for x, o, _ in calls if o.reconstruction is not None]
        aligned = None
        if fm_first is not None:
            if any(o.aligned is None for _, o, _ in calls):
                raise ValueError(
                    "align_weight > 0 and a foundation model is set, but the network returned no PFA output: "
                    "build the network with an adapter for the foundation model's channels (pfa_channels)"
                )
            aligned = (torch.cat([o.aligned for _, o, _ in calls]), torch.cat([f for _, _, f in calls]))
        vq_outputs = [o for _, o, _ in calls if o.vq_loss is not None]
        terms = loss_fn(
            engine.state.iteration - 1,
            labeled_logits,
            y_l,
            strong=strong_targets,
            fp=fp_target,
            reconstructions=reconstructions,
            aligned=aligned,
            vq_losses=[o.vq_loss for o in vq_outputs],
        )
        total = terms["loss"]
        vq_terms: dict[str, torch.Tensor] = {}
        if vq_outputs:
            for name in set.intersection(*(set(o.vq_loss_terms) for o in vq_outputs)):
                if "/" not in name:  # per-level terms stay out of the logs
                    vq_terms[f"vq_{name}"] = sum(o.vq_loss_terms[name] for o in vq_outputs) / len(vq_outputs)
        out["loss"] = total
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
        else:
            total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        grad_norm = self._guarded_step(total, buffers)

        for k, v in {**terms, **vq_terms}.items():
            out[k] = v.detach() if torch.is_tensor(v) else v
        out["grad_norm"] = grad_norm.detach()
        out["skipped_steps"] = self._skipped.clone()
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
