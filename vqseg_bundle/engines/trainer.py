"""The VQ-Seg semi-supervised trainer: a MONAI ``SupervisedTrainer`` with a weak-to-strong iteration.

MONAI has no semi-supervised trainer, so ``_iteration`` is written here; everything around it
(ignite engine, events, handlers, checkpointing, metrics) is MONAI's. One iteration:

1. one labeled batch (the engine's own data loader) and one unlabeled batch (a second loader
   cycling on its own, :class:`~vqseg_bundle.engines.loaders.InfiniteLoader`);
2. the EMA teacher labels the weak view with its plain ``forward`` (never perturbed):
   pseudo-labels = argmax, confidence = max softmax;
3. CutMix on each of the two strong views, applied identically to pseudo-labels and confidences;
4. the student runs in **one** call of :class:`SemiSupervisedForward` (so DDP sees one forward per
   backward): ``forward_train`` on the labeled batch without perturbation and on the two strong
   views concatenated (``2 B_u`` images) with perturbation (QPM);
5. ``loss = w_sup * L_sup + r_t (w_unsup * L_unsup + w_unsup_dice * L_unsup_dice)
   + w_rec * (L1_rec(labeled) + L1_rec(unlabeled)) + w_align * InfoNCE(PFA, FM) + w_vq * L_vq``;
6. backward, optional gradient clipping, optimizer step guarded against non-finite values.

``r_t`` is the optional ramp-up factor of the pseudo-label terms (:func:`~vqseg_bundle.engines.rampup.rampup_factor`).
When no loss term reads the unlabeled batch (labeled-only training: every unlabeled weight 0, or the
network has nothing to train on it), steps 2-3 and the unlabeled branch are skipped.

Events fire in MONAI's order: ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
``MODEL_COMPLETED``. ``engine.state.output`` is ``[dict]``, MONAI's decollated form (so that the stock
``from_engine(["loss"], first=True)`` of ``StatsHandler`` / ``MLFlowHandler`` works); the dict holds
detached scalar tensors only (``"loss"`` and every term, ``"mask_ratio"``, ``"grad_norm"``,
``"skipped_steps"``, ``"lr"``): nothing in the iteration reads a value back to the host, so logging
handlers decide how often to synchronise (``iteration_log``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.losses import MaskedDiceLoss
from torch.optim import Optimizer

from vqseg_bundle.engines.ema import _unwrap
from vqseg_bundle.engines.loaders import InfiniteLoader
from vqseg_bundle.engines.rampup import RAMPUP_SHAPES, rampup_factor
from vqseg_bundle.losses import (
    ConfidenceMaskedCrossEntropy,
    SupervisedSegLoss,
    patch_infonce_loss,
    pseudo_labels_from_logits,
    reconstruction_l1_loss,
)
from vqseg_bundle.transforms.augment import STRONG_KEYS
from vqseg_bundle.transforms.cutmix import BatchCutMix

__all__ = ["NAN_POLICIES", "SemiSupervisedForward", "SemiSupervisedTrainer"]

logger = logging.getLogger(__name__)

NAN_POLICIES = ("skip", "none")
_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class SemiSupervisedForward(nn.Module):
    """The student's two training forwards of one step as a single ``forward`` call.

    DDP synchronises gradients through hooks set up in ``forward``; calling ``forward_train`` on a
    wrapped network twice would bypass it (or trip "marked ready twice"). Wrap this module, not the
    network, in ``DistributedDataParallel`` (``configs/multi_gpu_train.yaml`` does).
    """

    def __init__(self, network: nn.Module) -> None:
        """
        Args:
            network: a VQ-Seg network with ``forward_train(x, perturb, generator, align_size) -> VQSegOutput``.
        """
        super().__init__()
        if not callable(getattr(network, "forward_train", None)):
            raise ValueError(f"network must have a forward_train method, got {type(network).__name__}")
        self.network = network

    def forward(
        self,
        labeled: torch.Tensor,
        unlabeled: torch.Tensor | None,
        perturb: bool = True,
        generator: torch.Generator | None = None,
        align_size: Sequence[int] | None = None,
    ) -> tuple[Any, Any]:
        """
        Args:
            labeled: ``(B_l, C, H, W)`` labeled images, never perturbed.
            unlabeled: ``(B_u', C, H, W)`` strong views, perturbed when ``perturb``; ``None`` skips the
                unlabeled branch (labeled-only training).
            perturb: apply the network's feature perturbation (QPM) to the unlabeled branch.
            generator: random generator for the perturbation (on the inputs' device).
            align_size: ``(h, w)`` of the foundation model's feature grid, or ``None`` without PFA.

        Returns:
            ``(VQSegOutput of labeled, VQSegOutput of unlabeled or None)``.
        """
        out_l = self.network.forward_train(labeled, perturb=False, generator=generator, align_size=align_size)
        if unlabeled is None:
            return out_l, None
        out_u = self.network.forward_train(unlabeled, perturb=perturb, generator=generator, align_size=align_size)
        return out_l, out_u


class SemiSupervisedTrainer(SupervisedTrainer):
    """Weak-to-strong semi-supervised trainer with an EMA teacher, CutMix, QPM, reconstruction and PFA.

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
        supervised_loss: Callable | None = None,
        unsupervised_loss: Callable | None = None,
        cutmix: BatchCutMix | None = None,
        foundation_model: nn.Module | None = None,
        sup_weight: float = 1.0,
        unsup_weight: float = 1.0,
        unsup_rampup_iterations: int = 0,
        unsup_rampup_shape: str = "sigmoid",
        unsup_dice_weight: float = 0.0,
        recon_weight: float = 1.0,
        align_weight: float = 5.0,
        align_temperature: float = 0.1,
        vq_weight: float = 1.0,
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
            supervised_loss: ``(logits, labels) -> scalar``; default ``SupervisedSegLoss()`` ((CE + Dice) / 2).
            unsupervised_loss: ``(logits, pseudo_labels, confidence) -> MaskedCEResult``; default
                ``ConfidenceMaskedCrossEntropy(threshold=0.95)``.
            cutmix: CutMix of the strong views (``None``: no CutMix).
            foundation_model: frozen FM ``(B, C, H, W) -> (B, C_fm, h, w)`` for PFA, or ``None``
                (no alignment loss; the network then needs no adapter).
            sup_weight, unsup_weight, unsup_dice_weight, recon_weight, align_weight, vq_weight: loss
                weights (>= 0). ``unsup_dice_weight`` adds a confidence-masked Dice to the pseudo-label CE.
            unsup_rampup_iterations: the pseudo-label terms' weights (``unsup_weight``, ``unsup_dice_weight``)
                ramp up from ~0 over this many iterations (0: constant from the first step, as in the paper);
                the current factor is logged as ``output["unsup_rampup"]``.
            unsup_rampup_shape: ``"sigmoid"`` (``exp(-5 (1 - t)^2)``, SSL4MIS) or ``"linear"``.
            align_temperature: InfoNCE temperature (> 0).
            perturb: perturb the student's unlabeled branch (QPM or the network's configured mode).
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
        weights = dict(
            sup_weight=sup_weight,
            unsup_weight=unsup_weight,
            unsup_dice_weight=unsup_dice_weight,
            recon_weight=recon_weight,
            align_weight=align_weight,
            vq_weight=vq_weight,
        )
        for name, value in weights.items():
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if int(unsup_rampup_iterations) < 0:
            raise ValueError(f"unsup_rampup_iterations must be >= 0, got {unsup_rampup_iterations}")
        if unsup_rampup_shape not in RAMPUP_SHAPES:
            raise ValueError(f"unsup_rampup_shape must be one of {RAMPUP_SHAPES}, got {unsup_rampup_shape!r}")
        if align_temperature <= 0:
            raise ValueError(f"align_temperature must be > 0, got {align_temperature}")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {tuple(_AMP_DTYPES)}, got {amp_dtype!r}")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm}")
        if epoch_length is None or int(epoch_length) < 1:
            raise ValueError(f"epoch_length must be a positive int (the loaders cycle forever), got {epoch_length}")
        if kwargs.get("decollate"):
            raise ValueError("decollate must be False: the output holds scalar loss terms, not batches")
        kwargs["decollate"] = False

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
            loss_function=supervised_loss if supervised_loss is not None else SupervisedSegLoss(),
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
        self.unsupervised_loss = (
            unsupervised_loss if unsupervised_loss is not None else ConfidenceMaskedCrossEntropy(threshold=0.95)
        )
        self.unsup_dice = MaskedDiceLoss(to_onehot_y=True, softmax=True)
        self.cutmix = cutmix
        self.foundation_model = foundation_model.eval() if foundation_model is not None else None
        if self.foundation_model is not None:
            for p in self.foundation_model.parameters():
                p.requires_grad_(False)
        self.weights = {k: float(v) for k, v in weights.items()}
        self.unsup_rampup_iterations = int(unsup_rampup_iterations)
        self.unsup_rampup_shape = unsup_rampup_shape
        self.uses_unlabeled = self._uses_unlabeled(plain)
        self.align_temperature = float(align_temperature)
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
        self.grad_scaler = (
            torch.amp.GradScaler(dev.type) if self.use_amp and self.amp_dtype == torch.float16 else None
        )
        self._skipped = torch.zeros((), dtype=torch.long, device=dev)
        self.add_event_handler(Events.STARTED, self._start_unlabeled)

    # ------------------------------------------------------------------ helpers
    def _uses_unlabeled(self, network: nn.Module) -> bool:
        """Whether any loss term reads the unlabeled batch; when none does (labeled-only training) the
        teacher and the student's unlabeled branch are skipped instead of computed with weight 0."""
        w = self.weights
        return (
            w["unsup_weight"] > 0
            or w["unsup_dice_weight"] > 0
            or (w["recon_weight"] > 0 and bool(getattr(network, "reconstruction", False)))
            or (w["align_weight"] > 0 and self.foundation_model is not None)
            or (w["vq_weight"] > 0 and len(getattr(network, "vq_levels", ())) > 0)
        )

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

    def _guarded_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Optimizer step that is undone on the device when the loss or gradients are not finite.

        Returns:
            The global gradient norm (scalar tensor, before clipping).
        """
        params = self._trainable()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if not params:
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
            restored = [torch.where(finite, t, b) for t, b in zip(guarded, backup)]
            torch._foreach_copy_(guarded, restored)
            new_state = [t for t in _state_tensors() if id(t) not in old_ids]
            if new_state:
                torch._foreach_copy_(new_state, [torch.where(finite, t, torch.zeros_like(t)) for t in new_state])
        self._skipped += (~finite).long()
        return grad_norm

    def _foundation_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return self.foundation_model(images).float()

    def _unlabeled_step_inputs(self, engine: Engine) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Next unlabeled batch -> the student's CutMixed strong views and their pseudo-labels.

        The EMA teacher labels the weak view with its plain forward (never perturbed): pseudo-labels =
        argmax, confidence = max softmax; each strong view is CutMixed with its own boxes and partners,
        which move the pseudo-labels and confidences identically.

        Returns:
            ``x_u`` ``(2 B_u, C, H, W)``, ``pseudo`` ``(2 B_u, H, W)`` long, ``confidence`` ``(2 B_u, H, W)``.
        """
        if self._unlabeled_iter is None:
            self._start_unlabeled(engine)
        unlabeled = next(self._unlabeled_iter)
        for key in ("image", *STRONG_KEYS):
            if key not in unlabeled:
                raise ValueError(
                    f"unlabeled batch has no {key!r} (keys: {sorted(unlabeled)}); build the unlabeled dataset "
                    "with vqseg_bundle.transforms.unlabeled_transforms"
                )
        x_w = self._to_device(unlabeled["image"], torch.float32)
        views = [self._to_device(unlabeled[k], torch.float32) for k in STRONG_KEYS]
        with torch.no_grad(), self._autocast():
            teacher_logits = self._teacher_forward(x_w)
        pseudo, conf = pseudo_labels_from_logits(teacher_logits.float())
        mixed, pls, confs = [], [], []
        for view in views:
            if self.cutmix is not None:
                view, (pl_v, conf_v) = self.cutmix(view, [pseudo, conf], generator=self.generator)
            else:
                pl_v, conf_v = pseudo, conf
            mixed.append(view)
            pls.append(pl_v)
            confs.append(conf_v)
        return torch.cat(mixed), torch.cat(pls), torch.cat(confs)

    # ------------------------------------------------------------------ iteration
    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> list[dict]:  # type: ignore[override]
        """One semi-supervised step; returns ``engine.state.output``: ``[{name: detached scalar}]``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x_l = self._to_device(batchdata["image"], torch.float32)
        y_l = self._to_device(batchdata["label"], torch.long)
        if y_l.ndim == 4:
            y_l = y_l[:, 0]
        w = self.weights
        gen = self.generator
        x_u = pl_u = conf_u = None
        if self.uses_unlabeled:
            x_u, pl_u, conf_u = self._unlabeled_step_inputs(engine)

        fm_l = fm_u = None
        align_size = None
        if self.foundation_model is not None and w["align_weight"] > 0:
            fm_l = self._foundation_features(x_l)
            fm_u = self._foundation_features(x_u)
            align_size = tuple(fm_l.shape[-2:])

        out: dict[str, Any] = {}
        engine.state.output = [out]
        self.student_step.train()
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            out_l, out_u = self.student_step(x_l, x_u, perturb=self.perturb, generator=gen, align_size=align_size)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        terms: dict[str, torch.Tensor] = {}
        terms["loss_sup"] = self.loss_function(out_l.seg_logits.float(), y_l)
        total = w["sup_weight"] * terms["loss_sup"]
        mask_ratio = None
        rampup = rampup_factor(engine.state.iteration - 1, self.unsup_rampup_iterations, self.unsup_rampup_shape)
        if out_u is not None:
            unsup = self.unsupervised_loss(out_u.seg_logits, pl_u, conf_u)
            terms["loss_unsup"] = unsup.loss
            mask_ratio = unsup.kept_ratio
            total = total + rampup * w["unsup_weight"] * terms["loss_unsup"]
            if w["unsup_dice_weight"] > 0:
                threshold = getattr(self.unsupervised_loss, "threshold", 0.95)
                keep = (conf_u >= threshold).unsqueeze(1).float()
                terms["loss_unsup_dice"] = self.unsup_dice(out_u.seg_logits.float(), pl_u.unsqueeze(1), mask=keep)
                total = total + rampup * w["unsup_dice_weight"] * terms["loss_unsup_dice"]
        if out_l.reconstruction is not None:
            terms["loss_rec_labeled"] = reconstruction_l1_loss(out_l.reconstruction, x_l)
            rec = terms["loss_rec_labeled"]
            if out_u is not None and out_u.reconstruction is not None:
                terms["loss_rec_unlabeled"] = reconstruction_l1_loss(out_u.reconstruction, x_u)
                rec = rec + terms["loss_rec_unlabeled"]
            total = total + w["recon_weight"] * rec
        if fm_l is not None:
            if out_l.aligned is None or out_u.aligned is None:
                raise ValueError(
                    "align_weight > 0 and a foundation model is set, but the network returned no PFA output: "
                    "build the network with an adapter for the foundation model's channels (pfa_channels)"
                )
            terms["loss_align"] = patch_infonce_loss(
                torch.cat([out_l.aligned, out_u.aligned]), torch.cat([fm_l, fm_u]), self.align_temperature
            )
            total = total + w["align_weight"] * terms["loss_align"]
        vq_terms: dict[str, torch.Tensor] = {}
        vq_outputs = [o for o in (out_l, out_u) if o is not None and o.vq_loss is not None]
        if vq_outputs:
            terms["loss_vq"] = sum(o.vq_loss for o in vq_outputs) / len(vq_outputs)
            total = total + w["vq_weight"] * terms["loss_vq"]
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
        grad_norm = self._guarded_step(total)

        out["loss"] = total.detach()
        for k, v in {**terms, **vq_terms}.items():
            out[k] = v.detach()
        if mask_ratio is not None:
            out["mask_ratio"] = mask_ratio.detach()
            out["unsup_rampup"] = rampup
        out["grad_norm"] = grad_norm.detach()
        out["skipped_steps"] = self._skipped.clone()
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
