"""``torch.export`` (``.pt2``) export of the inference network, checked against PyTorch."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.inferers.export import compare_program, export_program
from vqseg_bundle.networks import VQSegUNet

GUARDED = dict(codebook_type="learnable", codebook_dim=8, cosine=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(vq_levels=[]),  # the default recipe's plain U-Net
        dict(vq_levels=["bottleneck"], codebook_size=64),  # the paper's SimVQ quantizer
        dict(vq_levels=[2, 3], codebook_size=64, quantizer=GUARDED),  # collapse-guarded quantizer
    ],
)
def test_exported_program_matches_pytorch_at_another_batch_size(tmp_path, kwargs):
    torch.manual_seed(0)
    net = VQSegUNet(features=(4, 8, 16, 32), reconstruction=False, **kwargs).eval()
    path = export_program(net, tmp_path / "sub" / "model.pt2", image_size=32)
    assert path.is_file()
    diff, scale = compare_program(net, path, image_size=32, batch=5)
    assert scale > 0 and diff <= 1e-5 + 1e-5 * scale
    loaded = torch.export.load(str(path)).module()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_compare_program_names_a_missing_file(tmp_path):
    net = VQSegUNet(features=(4, 8), vq_levels=[], reconstruction=False)
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        compare_program(net, tmp_path / "missing.pt2", image_size=16)
