"""Feature-perturbation baselines applied to (post-VQ) feature maps: UniMatch feature dropout and UniMatch V2
complementary dropout; and :func:`build_perturbation`, the one place that turns a perturbation name into the
built module(s) a network takes. QPM, which perturbs code indices instead, lives in :mod:`.qpm`.

Both are a few lines on top of random channel masks; they are written here (rather than with
``nn.Dropout2d``) to accept a ``torch.Generator`` and, for the complementary variant, to couple two views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from .qpm import QuantizedPerturbation

__all__ = ["PERTURBATIONS", "FeatureDropout", "ComplementaryDropout", "build_perturbation"]

PERTURBATIONS = ("qpm", "none", "dropout", "complementary_dropout", "qpm_dropout")


class FeatureDropout(nn.Module):
    """UniMatch feature perturbation: channel-wise dropout (``Dropout2d``) with rate ``p`` on each map.

    Args:
        p: drop probability in [0, 1); kept channels are scaled by ``1 / (1 - p)`` (UniMatch: 0.5).

    ``forward(features: list[(B, C_l, h_l, w_l)], generator=None) -> list`` of the same shapes; each map
    and each sample gets its own mask. Applied whenever called (the network calls it only on the
    perturbed branch), whatever the train/eval mode.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"FeatureDropout: p must be in [0, 1), got {p}.")
        self.p = float(p)

    def forward(self, features: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if self.p == 0.0:
            return list(features)
        out = []
        for f in features:
            keep = torch.rand(f.shape[0], f.shape[1], generator=generator, device=f.device) >= self.p
            mask = keep.to(f.dtype) / (1.0 - self.p)
            out.append(f * mask.view(*mask.shape, *([1] * (f.ndim - 2))))
        return out


class ComplementaryDropout(nn.Module):
    """UniMatch V2 complementary channel dropout over two strong views.

    The batch must hold the two views concatenated, ``cat([view1, view2])`` (so B is even and sample ``b``
    of the first half pairs with sample ``b + B/2``). For each pair a channel mask ``m ~ Bernoulli(1 - p)``
    is drawn: the first view keeps channels ``m`` scaled by ``1 / (1 - p)``, the second view the
    complementary channels ``1 - m`` scaled by ``1 / p`` (with p = 0.5 both are the UniMatch V2 ``{0, 2}``
    masks that sum to 2). A fraction ``keep_pair_ratio`` of the pairs (``floor(ratio * B/2)`` of them,
    chosen at random) is left unperturbed, as in UniMatch V2. One pair selection per call, an independent
    channel mask per feature map.

    Args:
        p: channel drop probability of the first view, in (0, 1).
        keep_pair_ratio: fraction of pairs left unperturbed, in [0, 1].

    ``forward(features: list[(B, C_l, h_l, w_l)], generator=None) -> list`` of the same shapes.
    """

    def __init__(self, p: float = 0.5, keep_pair_ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < float(p) < 1.0:
            raise ValueError(f"ComplementaryDropout: p must be in (0, 1), got {p}.")
        if not 0.0 <= float(keep_pair_ratio) <= 1.0:
            raise ValueError(f"ComplementaryDropout: keep_pair_ratio must be in [0, 1], got {keep_pair_ratio}.")
        self.p = float(p)
        self.keep_pair_ratio = float(keep_pair_ratio)

    def forward(self, features: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if not features:
            return []
        b = features[0].shape[0]
        if b % 2 != 0:
            raise ValueError(
                "ComplementaryDropout: the batch must be the two strong views concatenated (even size), "
                f"got batch size {b}."
            )
        half = b // 2
        device = features[0].device
        n_kept = int(self.keep_pair_ratio * half)
        kept = torch.zeros(half, dtype=torch.bool, device=device)
        if n_kept > 0:
            kept[torch.rand(half, generator=generator, device=device).argsort()[:n_kept]] = True
        out = []
        for f in features:
            if f.shape[0] != b:
                raise ValueError(f"ComplementaryDropout: all maps need batch {b}, got {tuple(f.shape)}.")
            m = (torch.rand(half, f.shape[1], generator=generator, device=device) >= self.p).to(f.dtype)
            first = m / (1.0 - self.p)
            second = (1.0 - m) / self.p
            ones = torch.ones_like(first)
            first = torch.where(kept[:, None], ones, first)
            second = torch.where(kept[:, None], ones, second)
            mask = torch.cat([first, second], dim=0)
            out.append(f * mask.view(*mask.shape, *([1] * (f.ndim - 2))))
        return out


def build_perturbation(
    name: str | None, qpm: Mapping | None = None, dropout: Mapping | None = None, complementary: Mapping | None = None
) -> nn.Module | list[nn.Module] | None:
    """The perturbation module(s) a network takes (``perturbation=`` of the VQ-Seg networks), from its name.

    Args:
        name: ``"qpm"`` (:class:`~.qpm.QuantizedPerturbation`), ``"dropout"`` (:class:`FeatureDropout`),
            ``"complementary_dropout"`` (:class:`ComplementaryDropout`), ``"qpm_dropout"`` (QPM, then feature
            dropout: a list of both) or ``"none"`` / ``None`` (no perturbation: the one switch that turns it off).
        qpm, dropout, complementary: keyword arguments of the three classes (their defaults otherwise; options
            of a class the name does not use are ignored, so a config can hold all three).

    Raises:
        ValueError: unknown name.
    """
    key = "none" if name is None else str(name)
    if key not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {name!r}.")
    modules: list[nn.Module] = []
    if key in ("qpm", "qpm_dropout"):
        modules.append(QuantizedPerturbation(**dict(qpm or {})))
    if key in ("dropout", "qpm_dropout"):
        modules.append(FeatureDropout(**dict(dropout or {})))
    if key == "complementary_dropout":
        modules.append(ComplementaryDropout(**dict(complementary or {})))
    if not modules:
        return None
    return modules[0] if len(modules) == 1 else modules
