"""2D image inputs (PNG, JPEG, ...) of an inference run: one grey channel, converted as in training.

:class:`ToGreyd` follows ``LoadImaged`` + ``EnsureChannelFirstd`` in ``configs/inference.yaml``: a colour image
``(3, W, H)`` (or grey + alpha, RGBA) becomes ``(1, W, H)`` by :func:`vqseg_bundle.data.images2d.to_grey`, the
conversion the training reader applies (``color_to_grey`` of both configs must agree). Grey inputs and volumes pass
unchanged. The segmentation of a 2D image input is written as an image file (``output_ext_2d``, default PNG) at the
input's own size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from vqseg_bundle.data.images2d import check_color_to_grey, to_grey

__all__ = ["ToGreyd"]


class ToGreyd:
    """Channel-first 2D images with 2-4 channels to one grey channel (``mode``: ``"luminance"``, ``"mean"`` or
    ``"error"``); ``(C, W, H)`` -> ``(1, W, H)``, metadata kept. Errors name the file."""

    def __init__(self, keys: str | Sequence[str] = "image", mode: str = "luminance") -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.mode = check_color_to_grey(mode)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            img = d[key]
            if img.ndim != 3 or img.shape[0] == 1:
                continue  # grey 2D image, or a volume (CheckInputd judges its channels)
            meta = getattr(img, "meta", None) or {}
            name = str(meta.get("filename_or_obj", "<unknown file>"))
            array = img.detach().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
            grey = torch.as_tensor(np.ascontiguousarray(to_grey(array, self.mode, name)))[None]
            if isinstance(img, MetaTensor):
                grey = MetaTensor(grey, affine=img.affine, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = grey
        return d
