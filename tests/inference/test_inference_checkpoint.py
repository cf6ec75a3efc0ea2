"""load_network_weights / read_state_dict: accepted layouts and clear errors."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.inferers import load_network_weights, read_state_dict


def make_net(k: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, k, 1))


def test_flat_state_dict_round_trip(tmp_path):
    src, dst = make_net(), make_net()
    torch.nn.init.constant_(src[2].weight, 0.5)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    out = load_network_weights(dst, tmp_path / "model.pt")
    assert out is dst
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_nested_and_ddp_prefixed(tmp_path):
    src = make_net()
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "nested.pt")
    sd = read_state_dict(tmp_path / "nested.pt")
    assert set(sd) == set(src.state_dict())
    torch.save({"network": src.state_dict(), "optimizer": {"lr": 1.0}}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="two.pt"):
        read_state_dict(tmp_path / "two.pt")
    assert set(read_state_dict(tmp_path / "two.pt", key="network")) == set(src.state_dict())
    with pytest.raises(ValueError, match="no entry 'teacher'"):
        read_state_dict(tmp_path / "two.pt", key="teacher")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_network_weights(make_net(), tmp_path / "nope.pt")


def test_other_class_count_is_a_clear_error(tmp_path):
    torch.save(make_net(k=3).state_dict(), tmp_path / "k3.pt")
    with pytest.raises(ValueError) as err:
        load_network_weights(make_net(k=4), tmp_path / "k3.pt")
    msg = str(err.value)
    assert "k3.pt" in msg and "shape mismatches" in msg and "2.weight" in msg and "(3, 8, 1, 1)" in msg


def test_other_network_is_a_clear_error(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError) as err:
        load_network_weights(make_net(), tmp_path / "linear.pt")
    msg = str(err.value)
    assert "linear.pt" in msg and "missing keys" in msg and "unexpected keys" in msg and "0.weight" in msg


def test_non_checkpoint_file(tmp_path):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_network_weights(make_net(), tmp_path / "bad.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt"):
        load_network_weights(make_net(), tmp_path / "list.pt")


def test_non_strict_allows_missing_but_not_shapes(tmp_path):
    src = make_net()
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("1.")}
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_network_weights(make_net(), tmp_path / "partial.pt")
    load_network_weights(make_net(), tmp_path / "partial.pt", strict=False)
    torch.save(make_net(k=2).state_dict(), tmp_path / "k2.pt")
    with pytest.raises(ValueError, match="shape"):
        load_network_weights(make_net(), tmp_path / "k2.pt", strict=False)
