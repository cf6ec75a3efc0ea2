"""VQSegViT: DINOv2 weight loading (Meta and timm formats), clear errors, shapes, gradients, export."""

import pytest
import torch
from vqseg_bundle.networks import QuantizedPerturbation, VQSegViT
from vqseg_bundle.networks.vit import create_dinov2_backbone

TINY = dict(vit_kwargs=dict(depth=4, embed_dim=32, num_heads=2), dpt_features=8, dpt_level_channels=(4, 4, 8, 8))


def _net(**kwargs):
    torch.manual_seed(0)
    args = dict(pretrained=False, codebook_size=32, perturbation=QuantizedPerturbation()) | TINY | kwargs
    return VQSegViT(**args)


def _meta_state_dict(backbone: torch.nn.Module) -> dict:
    """Meta's dinov2_vits14_pretrain.pth layout: timm's names plus ``mask_token`` (1, C), 518-px position
    embedding, no classifier head."""
    sd = {k: v.clone() for k, v in backbone.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, backbone.embed_dim)
    return sd


def test_meta_format_state_dict_round_trips_exactly(tmp_path):
    torch.manual_seed(1)
    source = create_dinov2_backbone(image_size=518, pretrained=False, vit_kwargs=TINY["vit_kwargs"])
    meta = _meta_state_dict(source)
    assert {"mask_token", "pos_embed", "blocks.0.ls1.gamma", "blocks.0.attn.qkv.weight", "norm.weight"} <= set(meta)
    assert meta["pos_embed"].shape == (1, 1 + 37 * 37, 32)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(meta, path)

    net = _net(weights_path=str(path), pretrained=True, image_size=518)
    loaded = net.backbone.state_dict()
    assert set(loaded) == set(meta) - {"mask_token"}
    for key, value in loaded.items():
        assert torch.equal(value, meta[key]), key


def test_meta_format_is_resampled_to_224_and_timm_format_loads(tmp_path):
    torch.manual_seed(2)
    source = create_dinov2_backbone(image_size=518, pretrained=False, vit_kwargs=TINY["vit_kwargs"])
    torch.save(_meta_state_dict(source), tmp_path / "meta.pth")
    net = _net(weights_path=str(tmp_path / "meta.pth"), image_size=224)
    assert net.backbone.pos_embed.shape == (1, 1 + 16 * 16, 32)
    assert torch.equal(net.backbone.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)
    # timm format (a wrapped {"state_dict": ...} checkpoint of a 224-px model)
    torch.save({"state_dict": net.backbone.state_dict()}, tmp_path / "timm.pth")
    other = _net(weights_path=str(tmp_path / "timm.pth"), image_size=224)
    for key, value in other.backbone.state_dict().items():
        assert torch.equal(value, net.backbone.state_dict()[key]), key


def test_pretrained_without_weights_path_is_an_error_naming_the_file():
    with pytest.raises(ValueError, match="dinov2_vits14_pretrain.pth"):
        VQSegViT(pretrained=True, weights_path=None, **TINY)


def test_missing_and_mismatched_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        _net(weights_path=str(tmp_path / "nope.pth"))
    other = create_dinov2_backbone(pretrained=False, vit_kwargs=dict(depth=4, embed_dim=48, num_heads=2))
    torch.save(other.state_dict(), tmp_path / "vitb.pth")
    with pytest.raises(ValueError, match="vitb.pth"):
        _net(weights_path=str(tmp_path / "vitb.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        _net(weights_path=str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("shape", [(2, 1, 30, 45), (1, 1, 28, 28), (1, 3, 20, 33)])
def test_shapes_for_odd_sizes(shape):
    net = _net(in_channels=shape[1], pfa_channels=6)
    b, c, h, w = shape
    out = net.forward_train(
        torch.rand(*shape), perturb=True, generator=torch.Generator().manual_seed(0), align_size=(2, 3)
    )
    assert out.seg_logits.shape == (b, 4, h, w)
    assert out.reconstruction.shape == (b, c, h, w)
    assert out.aligned.shape == (b, 6, 2, 3)
    grid = (max(1, round(h / 14)), max(1, round(w / 14)))
    assert out.indices[0].shape == (b, *grid) and out.pre_vq[0].shape == (b, 32, *grid)
    assert net.eval()(torch.rand(*shape)).shape == (b, 4, h, w)


def test_every_trainable_parameter_gets_a_gradient():
    net = _net(pfa_channels=3).train()
    out = net.forward_train(torch.rand(2, 1, 42, 28), perturb=True, align_size=(3, 2))
    (out.seg_logits.square().mean() + out.reconstruction.abs().mean() + out.vq_loss + out.aligned.mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_defaults_and_param_groups():
    net = _net()
    assert net.vq_levels == (3,) and net.intermediate_layers == (0, 1, 2, 3)
    groups = net.param_groups()
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(net.parameters()))
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in net.backbone.parameters()}


def test_full_size_vit_small_defaults():
    net = VQSegViT(pretrained=False, codebook_size=16)
    assert net.intermediate_layers == (2, 5, 8, 11)
    assert net.backbone.embed_dim == 384 and len(net.backbone.blocks) == 12
    # ViT-S/14 by hand: 12 blocks of 12 C^2 + 15 C, patch embedding, cls token, 224 px position grid, norm
    c = 384
    expected = 12 * (12 * c * c + 15 * c) + (3 * 14 * 14 * c + c) + c + (1 + 16 * 16) * c + 2 * c
    assert sum(p.numel() for p in net.backbone.parameters()) == expected


def test_invalid_configuration():
    with pytest.raises(ValueError, match="in_channels"):
        _net(in_channels=2)
    with pytest.raises(ValueError, match="intermediate_layers"):
        _net(intermediate_layers=(0, 1, 2, 9))


def test_torchscript_trace_matches_pytorch():
    net = _net().eval()
    x = torch.rand(1, 1, 56, 56)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        y = torch.rand(3, 1, 56, 56)
        torch.testing.assert_close(traced(y), net(y))
