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
5. the loss module composes the terms; backward, then the optimizer step (optional gradient clipping, guarded
   against non-finite values).

When no loss term reads the unlabeled batch (labeled-only training) steps 2-4 and the unlabeled branch are
skipped.

Around it everything is MONAI's: the labeled batch comes through MONAI's ``prepare_batch`` mechanism
(:class:`~vqseg_bundle.engines.prepare_batch.PrepareLabeledBatch` by default; the unlabeled one through
``prepare_unlabeled_batch``, same interface), autocast and the float16 gradient scaler are MONAI's ``amp``,
``amp_kwargs`` and ``scaler`` (bf16 autocast on any device, no scaler; float16 with ``torch.amp.GradScaler``),
and the optimizer step is :class:`~vqseg_bundle.engines.step_guard.StepGuard` (gradient norm, clipping, the
non-finite step guard).

Events fire in MONAI's order: ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
``MODEL_COMPLETED``. ``engine.state.output`` is ``[dict]``, MONAI's decollated form (so that the stock
``from_engine(["loss"], first=True)`` of ``StatsHandler`` / ``MLFlowHandler`` works). The dict holds MONAI's
keys (``monai.utils.CommonKeys``): ``"image"`` the labeled images ``(B_l, C, H, W)``, ``"label"`` their labels
``(B_l, H, W)`` int64, ``"pred"`` the student's clean logits of them ``(B_l, K, H, W)`` (detached), ``"loss"``;
and detached scalar tensors (every loss term, ``"mask_ratio"``, ``"grad_norm"``, ``"skipped_steps"``, ``"lr"``,
what handlers add), which :func:`~vqseg_bundle.engines.handlers.scalar_output` selects for logging: nothing in
the iteration reads a value back to the host, so logging handlers decide how often to synchronise
(``iteration_log``).
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
from monai.engines.workflow import Workflow
from monai.inferers import Inferer
from monai.utils import CommonKeys
from torch.optim import Optimizer
from vqseg_bundle.engines.loaders import InfiniteLoader
from vqseg_bundle.engines.precision import emulated_bf16_warning
from vqseg_bundle.engines.prepare_batch import PrepareLabeledBatch, PrepareUnlabeledBatch
from vqseg_bundle.engines.step_guard import StepGuard
from vqseg_bundle.engines.student_step import SemiSupervisedForward
from vqseg_bundle.engines.unwrap import unwrap_model
from vqseg_bundle.losses import SemiSupervisedLoss, pseudo_labels_from_logits
from vqseg_bundle.transforms.augment import STRONG_KEYS
from vqseg_bundle.transforms.cutmix import BatchCutMix

__all__ = ["CUTMIX_PARTNERS", "PERTURBED_STREAMS", "PSEUDO_LABELERS", "STRONG_BN_STATS", "SemiSupervisedTrainer"]

logger = logging.getLogger(__name__)

#: who labels the weak view: the EMA teacher, or the student itself (UniMatch V1)
PSEUDO_LABELERS = ("teacher", "student")
#: which unlabeled stream the network's feature perturbation (QPM / dropout) acts on
PERTURBED_STREAMS = ("strong", "weak", "both")
#: where each strong view's CutMix partner comes from
CUTMIX_PARTNERS = ("batch", "second_batch")
#: whether the strong-view forward updates BatchNorm running statistics
STRONG_BN_STATS = ("update", "frozen")
_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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
        grad_clip_norm: float | None = None,
        nan_policy: str = "skip",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        channels_last: bool = False,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        seed: int = 0,
        non_blocking: bool = True,
        prepare_batch: Callable | None = None,
        prepare_unlabeled_batch: Callable | None = None,
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
            grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
            nan_policy: ``"skip"``: a step whose loss or gradient norm is not finite leaves parameters
                and optimizer state unchanged, decided on the device without host sync, counted in
                ``output["skipped_steps"]`` and logged by :class:`~vqseg_bundle.engines.handlers.NaNSkipLogger`;
                ``"none"``: no guard (pair with ignite's ``TerminateOnNan`` to stop instead).
            amp: autocast the forward passes (``amp_dtype``, on the trainer's device type: MONAI's ``amp`` with
                ``amp_kwargs={"dtype": ...}``); bf16 needs no gradient scaler.
            amp_dtype: ``"bfloat16"`` or ``"float16"`` (float16 uses ``torch.amp.GradScaler``, MONAI's ``scaler``).
            channels_last: convert inputs (and the networks) to channels-last memory format.
            compile: ``torch.compile`` the student step and the teacher forward.
            compile_kwargs: arguments of ``torch.compile``.
            seed: seed of the trainer's device random generator (CutMix boxes, QPM draws).
            non_blocking: asynchronous host-to-device copies.
            prepare_batch: MONAI ``prepare_batch`` callable of the labeled batch, returning ``(image, label)``
                (default :class:`~vqseg_bundle.engines.prepare_batch.PrepareLabeledBatch`).
            prepare_unlabeled_batch: the same for the unlabeled batch, returning ``{"image", "image_s1",
                "image_s2"}`` (default :class:`~vqseg_bundle.engines.prepare_batch.PrepareUnlabeledBatch`).
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
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {tuple(_AMP_DTYPES)}, got {amp_dtype!r}")
        emulated_bf16_warning(bool(amp), amp_dtype, device)
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
        plain = unwrap_model(network)
        if student_step is not None and not isinstance(student_step.module, SemiSupervisedForward):
            raise ValueError(
                "a DistributedDataParallel network must wrap SemiSupervisedForward(network), e.g. "
                "DistributedDataParallel(vqseg_bundle.engines.SemiSupervisedForward(net)); got DDP of "
                f"{type(student_step.module).__name__}"
            )
        if not callable(getattr(plain, "forward_train", None)):
            raise ValueError(f"network must be a VQ-Seg network with forward_train, got {type(plain).__name__}")
        # the network's perturbation is the one switch (perturbation "none" / None: nothing to perturb)
        has_perturbation = getattr(plain, "perturbation", "none") != "none"
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
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=labeled_loader,
            network=plain,
            optimizer=optimizer,
            loss_function=loss,
            epoch_length=int(epoch_length),
            non_blocking=non_blocking,
            prepare_batch=prepare_batch if prepare_batch is not None else PrepareLabeledBatch(channels_last),
            inferer=inferer,
            train_handlers=train_handlers,
            amp=bool(amp),
            amp_kwargs={"dtype": _AMP_DTYPES[amp_dtype]},
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
        self.perturb = has_perturbation
        self.channels_last = bool(channels_last)
        self.seed = int(seed)
        dev = torch.device(device)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(self.seed)
        self.prepare_unlabeled_batch = (
            prepare_unlabeled_batch
            if prepare_unlabeled_batch is not None
            else PrepareUnlabeledBatch(channels_last=channels_last)
        )
        # MONAI's scaler attribute: float16 only (bf16 needs none), on the trainer's device type
        self.scaler = torch.amp.GradScaler(dev.type) if self.amp and self.amp_dtype == torch.float16 else None
        self.step_guard = StepGuard(plain, optimizer, nan_policy, grad_clip_norm, self.scaler, dev)
        self.add_event_handler(Events.STARTED, self._start_unlabeled)

    @property
    def amp_dtype(self) -> torch.dtype:
        """The autocast dtype (``amp_kwargs["dtype"]``)."""
        return self.amp_kwargs["dtype"]

    def run(self) -> None:  # type: ignore[override]
        """Run the training: MONAI's ``Workflow.run``. MONAI's ``Trainer.run`` would first replace ``scaler`` by a
        CUDA float16 ``GradScaler`` whenever ``amp`` is set; the trainer keeps its own (float16 on the trainer's
        device type, none for bf16)."""
        Workflow.run(self)

    # ------------------------------------------------------------------ helpers
    def _start_unlabeled(self, engine: Engine) -> None:
        # resumed runs re-seed the device generator with the step count, so a resume does not
        # replay the random draws of the first steps
        # and each DDP rank gets its own stream
        self.generator.manual_seed(self.seed + int(engine.state.iteration) + 1_000_003 * int(engine.state.rank))
        self._unlabeled_iter = iter(self.unlabeled_loader)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.state.device.type, enabled=self.amp, **self.amp_kwargs)

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
        """The next unlabeled batch, through ``prepare_unlabeled_batch`` (``{"image", "image_s1", "image_s2"}``)."""
        if self._unlabeled_iter is None:
            self._start_unlabeled(engine)
        batch = next(self._unlabeled_iter)
        return self.prepare_unlabeled_batch(batch, engine.state.device, engine.non_blocking, **engine.to_kwargs)

    # ------------------------------------------------------------------ iteration
    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> list[dict]:  # type: ignore[override]
        """One semi-supervised step; returns ``engine.state.output``: ``[{image, label, pred, loss, name: scalar}]``
        (see the module docstring)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x_l, y_l = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
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

        out: dict[str, Any] = {CommonKeys.IMAGE: x_l, CommonKeys.LABEL: y_l}
        engine.state.output = [out]
        buffers = self.step_guard.snapshot_buffers()
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
        clean = out_lw.clean_seg_logits
        labeled_logits = clean[:b_l]
        out[CommonKeys.PRED] = labeled_logits.detach()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

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
        out[CommonKeys.LOSS] = total
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        grad_norm = self.step_guard.step(total, buffers)

        for k, v in {**terms, **vq_terms}.items():
            out[k] = v.detach() if torch.is_tensor(v) else v
        out["grad_norm"] = grad_norm.detach()
        out["skipped_steps"] = self.step_guard.skipped.clone()
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
