"""EMA teacher of the student network, with an explicit policy for buffers.

Written here rather than using ``ignite.handlers.EMAHandler`` because (1) the mean-teacher warm-up
``decay_t = min(1 - 1 / (t + 1), decay)`` used by UniMatch / VQ-Seg is not ignite's linear momentum
warm-up, (2) the step count is the trainer's global iteration, so a resumed run continues the same
EMA schedule, and (3) the update is a few fused ``torch._foreach`` kernels, with no host sync.

Buffer policy (``buffers``):

* ``"copy"`` (default, as ignite's ``EMAHandler``): the teacher takes the student's buffers (BatchNorm
  running statistics, VQ codebook buffers) after every step;
* ``"ema"`` (UniMatch V2, which averages every state-dict entry): floating-point buffers are averaged like
  the parameters, integer buffers (``num_batches_tracked``) copied;
* ``"none"``: buffers are left alone (only sensible when the teacher updates its own buffers).

The teacher is always kept in eval mode without gradients; it only ever runs ``forward``, which
never perturbs (QPM acts in ``forward_train(perturb=True)`` only).
"""

from __future__ import annotations

import copy

import torch
from ignite.engine import Engine, Events
from vqseg_bundle.engines.unwrap import unwrap_model

__all__ = ["BUFFER_POLICIES", "EMA_WARMUPS", "make_teacher", "ema_decay_at", "EMATeacher"]

BUFFER_POLICIES = ("copy", "ema", "none")
EMA_WARMUPS = ("mean_teacher", "none")


def make_teacher(student: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode deep copy of ``student`` (unwrapped from DDP / compile), on the same device.

    Args:
        student: the student network (plain, DDP-wrapped or compiled).

    Returns:
        The teacher module: ``requires_grad`` off on every parameter, ``eval()`` mode.
    """
    teacher = copy.deepcopy(unwrap_model(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_decay_at(iteration: int, decay: float, warmup: str = "mean_teacher") -> float:
    """EMA decay used after ``iteration`` optimizer steps (``iteration >= 1``).

    Args:
        iteration: 1-based global step count.
        decay: the target decay (0.99 in the paper, 0.996 in the released code).
        warmup: ``"mean_teacher"`` -> ``min(1 - 1 / (iteration + 1), decay)`` (the teacher follows
            the student closely at first); ``"none"`` -> ``decay`` from the first step.
    """
    if warmup not in EMA_WARMUPS:
        raise ValueError(f"warmup must be one of {EMA_WARMUPS}, got {warmup!r}")
    if warmup == "none":
        return decay
    return min(1.0 - 1.0 / (iteration + 1), decay)


class EMATeacher:
    """Ignite handler: after every training iteration, ``teacher <- decay * teacher + (1 - decay) * student``.

    Attach it to the trainer (``train#handlers``); its ``state_dict`` is empty because the schedule is
    a function of ``engine.state.iteration`` (restored by the checkpoint loader) and the teacher's
    weights are checkpointed as a module.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        decay: float = 0.99,
        warmup: str = "mean_teacher",
        buffers: str = "copy",
        interval: int = 1,
    ) -> None:
        """
        Args:
            teacher: the EMA model (see :func:`make_teacher`); same architecture as the student.
            student: the trained network (plain, DDP-wrapped or compiled).
            decay: EMA decay in ``[0, 1)``; 0 makes the teacher a copy of the student.
            warmup: ``"mean_teacher"`` or ``"none"`` (see :func:`ema_decay_at`).
            buffers: ``"copy"``, ``"ema"`` or ``"none"`` (see the module docstring).
            interval: update every ``interval`` iterations.
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if warmup not in EMA_WARMUPS:
            raise ValueError(f"warmup must be one of {EMA_WARMUPS}, got {warmup!r}")
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"buffers must be one of {BUFFER_POLICIES}, got {buffers!r}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        student = unwrap_model(student)
        t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
        if t_params.keys() != s_params.keys():
            missing = sorted(set(s_params) ^ set(t_params))[:5]
            raise ValueError(
                f"teacher and student parameters differ (e.g. {missing}): build the teacher with make_teacher"
            )
        t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
        if t_bufs.keys() != s_bufs.keys():
            raise ValueError("teacher and student buffers differ: build the teacher with make_teacher")
        self.teacher, self.student = teacher, student
        self.decay, self.warmup, self.buffers, self.interval = float(decay), warmup, buffers, int(interval)
        names = list(s_params)
        self._t_params = [t_params[n] for n in names]
        self._s_params = [s_params[n] for n in names]
        bnames = list(s_bufs)
        self._float_bufs = [(t_bufs[n], s_bufs[n]) for n in bnames if s_bufs[n].is_floating_point()]
        self._other_bufs = [(t_bufs[n], s_bufs[n]) for n in bnames if not s_bufs[n].is_floating_point()]
        self.last_decay: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def update(self, iteration: int) -> float:
        """Apply one EMA step for global step ``iteration``; returns the decay used."""
        decay = ema_decay_at(iteration, self.decay, self.warmup)
        weight = 1.0 - decay
        if self._t_params:
            torch._foreach_lerp_(self._t_params, [p.detach() for p in self._s_params], weight)
        if self.buffers != "none":
            if self._float_bufs:
                t, s = zip(*self._float_bufs, strict=True)
                if self.buffers == "copy":
                    torch._foreach_copy_(list(t), list(s))
                else:
                    torch._foreach_lerp_(list(t), list(s), weight)
            for t, s in self._other_bufs:
                t.copy_(s)
        self.teacher.eval()
        self.last_decay = decay
        return decay

    def __call__(self, engine: Engine) -> None:
        decay = self.update(engine.state.iteration)
        out = engine.state.output
        out = out[0] if isinstance(out, list) and out and isinstance(out[0], dict) else out
        if isinstance(out, dict):
            out["ema_decay"] = decay
