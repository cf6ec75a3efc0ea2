"""torch.jit.script of the VQ-Seg networks (their lean ``__prepare_scriptable__`` form) against eager ``forward``."""

import io

import pytest
import torch
from vqseg_bundle.networks import VQSegUNet, VQSegViT
from vqseg_bundle.networks.scriptable import ScriptableVQSeg

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

#: configs/train.yaml's quantizer options (the collapse guards) and the paper's SimVQ quantizer
GUARDED = {
    "codebook_type": "learnable",
    "codebook_dim": 8,
    "cosine": True,
    "kmeans_init": True,
    "dead_code_steps": 2,
    "gradient": "rotation",
}
QUANTIZERS = {"guarded": GUARDED, "simvq": {}}
TINY_VIT = dict(
    pretrained=False,
    image_size=56,
    vit_kwargs={"depth": 4, "embed_dim": 32, "num_heads": 2},
    dpt_features=8,
    dpt_level_channels=[4, 4, 8, 8],
)


def _unet(**kwargs) -> VQSegUNet:
    torch.manual_seed(0)
    return VQSegUNet(**({"features": (4, 8, 8, 16), "dropout": 0.0, "codebook_size": 32} | kwargs))


def _vit(**kwargs) -> VQSegViT:
    torch.manual_seed(0)
    return VQSegViT(**(TINY_VIT | {"codebook_size": 32} | kwargs))


def _train_a_little(net: torch.nn.Module, size: int, steps: int = 3) -> None:
    """A few gradient-enabled training forwards (k-means init, dead-code re-seeding, BatchNorm statistics) and
    optimizer steps, so that the compared networks are not the initial ones."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        out = net.forward_train(torch.rand(2, net.in_channels, size, size, generator=g))
        loss = out.seg_logits.square().mean() + out.vq_loss
        if out.reconstruction is not None:
            loss = loss + out.reconstruction.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _assert_scripted_matches(net: torch.nn.Module, shapes, exact: bool = True) -> torch.jit.ScriptModule:
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()  # and the saved / loaded file, as ckpt_export writes it
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    g = torch.Generator().manual_seed(2)
    for shape in shapes:
        x = torch.rand(*shape, generator=g)
        with torch.no_grad():
            ref = net(x)
            for out in (scripted(x), loaded(x)):
                assert out.shape == ref.shape
                if exact:  # the same operations on the same tensors
                    assert torch.equal(out, ref), (out - ref).abs().max()
                else:
                    torch.testing.assert_close(out, ref)
    return scripted


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("vq_levels", [["bottleneck"], "all", []])
def test_scripted_unet_matches_eager_forward(quantizer, vq_levels):
    net = _unet(vq_levels=vq_levels, quantizer=QUANTIZERS[quantizer], reconstruction=True)
    _train_a_little(net, 16)
    _assert_scripted_matches(net, [(3, 1, 16, 16), (1, 1, 33, 24)])


def test_scripted_search_is_chunked_like_the_eager_one():
    # 8 x 8 tokens against 32 codes in blocks of 2 rows: the scripted loop runs 32 times
    net = _unet(vq_levels=[0, "bottleneck"], quantizer={"max_chunk_elements": 64}).eval()
    _assert_scripted_matches(net, [(1, 1, 8, 8), (2, 1, 24, 16)])


def test_scripted_module_shares_only_the_segmentation_path():
    net = _unet(vq_levels="all", quantizer={"codebook_dim": 4}, reconstruction=True, pfa_channels=3).eval()
    lean = net.__prepare_scriptable__()
    assert isinstance(lean, ScriptableVQSeg) and not lean.training
    full, part = net.state_dict(), lean.state_dict()
    assert part and set(part) <= set(full)
    assert all(part[k].data_ptr() == full[k].data_ptr() for k in part)  # shared, not copied
    # what the segmentation forward does not need stays out of the exported file
    assert not [k for k in part if k.startswith(("rec_decoder", "adapter"))]
    assert {k for k in full if k.startswith(("encoder", "seg_decoder", "quantizers"))} == set(part)
    scripted = torch.jit.script(net)
    with pytest.raises(Exception, match=r"expected input \(B, 1, H, W\)"):
        scripted(torch.rand(1, 2, 16, 16))
    with pytest.raises(Exception, match="too small"):
        scripted(torch.rand(1, 1, 4, 16))


def test_tracing_still_uses_the_network_itself():
    net = _unet(vq_levels=["bottleneck"], reconstruction=True).eval()
    x, y = torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(y), net(y))
    # the traced graph holds the reconstruction decoder's parameters too (the full module was traced)
    assert any(k.startswith("rec_decoder") for k in traced.state_dict())


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_scripted_vit_matches_eager_forward(quantizer):
    options = QUANTIZERS[quantizer] | ({"codebook_dim": 16} if quantizer == "guarded" else {})
    net = _vit(vq_levels="all", quantizer=options, reconstruction=True)
    _train_a_little(net, 28, steps=2)
    # 35 x 63 is resized to 28 x 70 (a tie rounded to even: TorchScript's round must agree with Python's)
    _assert_scripted_matches(net, [(2, 1, 28, 28), (1, 1, 35, 63)])


def test_scripted_vit_encoder_equals_timm_forward_intermediates():
    net = _vit(vq_levels=["bottleneck"], intermediate_layers=[0, 1, 3, 2]).eval()
    lean = net.__prepare_scriptable__()
    scripted = torch.jit.script(lean)
    x = torch.rand(2, 1, 42, 56)
    with torch.no_grad():
        ref = net.encode(x)
        for maps in (lean.encode(x), scripted.encode(x)):
            assert len(maps) == len(ref) == 4
            assert all(torch.equal(a, b) for a, b in zip(maps, ref, strict=True))
