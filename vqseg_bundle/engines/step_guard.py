"""An optimizer step that is undone on the device when the loss or the gradients are not finite.

Written here because neither MONAI nor ignite has one: ignite's ``TerminateOnNan`` stops the run (the
bundle's :class:`~vqseg_bundle.engines.handlers.TerminateOnNonFinite` is its failing variant), and a
float16 ``GradScaler`` skips a step only with a host sync. The guard decides on the device, without a
host sync (a Python branch on the finiteness flag would force one every step): parameters, optimizer
state and the network's buffers are copied before the step and put back where the step was not finite.

Usage (one training step)::

    guard = StepGuard(network, optimizer, policy="skip")
    buffers = guard.snapshot_buffers()      # before the forward
    loss = ...; loss.backward()
    grad_norm = guard.step(loss, buffers)   # instead of optimizer.step()
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim import Optimizer

__all__ = ["NAN_POLICIES", "StepGuard"]

#: ``"skip"``: a non-finite step is undone on the device and counted; ``"none"``: no guard
NAN_POLICIES = ("skip", "none")


class StepGuard:
    """Optimizer step with gradient-norm computation, optional clipping and a non-finite step guard.

    ``skipped`` is a 0-d ``int64`` tensor on the device counting the steps undone so far (read it when
    logging only: reading it synchronises).
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: Optimizer,
        policy: str = "skip",
        grad_clip_norm: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """
        Args:
            network: the plain network whose buffers (BatchNorm statistics, quantizer state) are restored
                with a skipped step.
            optimizer: the optimizer stepped; the parameters of its groups that have a gradient are guarded.
            policy: one of :data:`NAN_POLICIES`.
            grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
            scaler: float16 ``GradScaler``: unscales before clipping and steps through the scaler, which
                skips non-finite steps itself (the guard then does not act).
            device: the device of the step (of the counter and of the zero gradient norm without gradients).

        Raises:
            ValueError: for an unknown ``policy`` or a non-positive ``grad_clip_norm``.
        """
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm}")
        self.network = network
        self.optimizer = optimizer
        self.policy = policy
        self.grad_clip_norm = grad_clip_norm
        self.scaler = scaler
        self.device = torch.device(device)
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)

    @property
    def guards_buffers(self) -> bool:
        """Whether buffers are snapshot and restored (``policy="skip"`` without a scaler)."""
        return self.policy == "skip" and self.scaler is None

    def _trainable(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def snapshot_buffers(self) -> dict[str, torch.Tensor] | None:
        """Copies of the network's buffers (BatchNorm running statistics, quantizer state) before the forward,
        for :meth:`step` to restore when the step is skipped (one fused copy, no host sync).

        Returns:
            ``{buffer name: copy}``, or ``None`` when the guard does not act on buffers.
        """
        if not self.guards_buffers:
            return None
        named = [(k, b) for k, b in self.network.named_buffers() if b is not None]
        floats = [(k, b) for k, b in named if b.is_floating_point()]
        snapshot = (
            dict(zip([k for k, _ in floats], torch._foreach_mul([b.detach() for _, b in floats], 1.0), strict=True))
            if floats
            else {}
        )
        snapshot.update({k: b.detach().clone() for k, b in named if not b.is_floating_point()})
        return snapshot

    def restore_buffers(self, finite: torch.Tensor, snapshot: dict[str, torch.Tensor] | None) -> None:
        """Where ``finite`` (a 0-d bool tensor) is false, put the buffers of :meth:`snapshot_buffers` back
        (on the device)."""
        if not snapshot:
            return
        current = []
        saved = []
        for k, b in self.network.named_buffers():
            old = snapshot.get(k)
            if old is not None and b is not None and old.shape == b.shape and old.device == b.device == finite.device:
                current.append(b)
                saved.append(old)
        if current:
            with torch.no_grad():
                torch._foreach_copy_(current, [torch.where(finite, b, o) for b, o in zip(current, saved, strict=True)])

    def step(self, loss: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Optimizer step that is undone on the device when the loss or gradients are not finite.

        Args:
            loss: the step's loss (0-d; ``backward`` already called).
            buffers: the network's buffers before the forward (:meth:`snapshot_buffers`): restored too when
                the step is skipped, so that a non-finite forward leaves no non-finite BatchNorm statistics.

        Returns:
            The global gradient norm (0-d tensor, before clipping).
        """
        params = self._trainable()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if not params:
            if buffers:
                self.restore_buffers(torch.isfinite(loss.detach()), buffers)
            return torch.zeros((), device=self.device)
        if self.grad_clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm, foreach=True)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        if self.scaler is not None:  # float16: the scaler already skips non-finite steps (with a sync)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return grad_norm
        if self.policy == "none":
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
        self.restore_buffers(finite, buffers)
        self.skipped += (~finite).long()
        return grad_norm
