"""QPM statistics: changed fraction, kernel neighbour distribution (chi-square), j != i, shuffle multiset."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from vqseg_bundle.networks.qpm import QuantizedPerturbation


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _kernel_probs(codebook: np.ndarray, i: int, temperature: float, distance: str) -> np.ndarray:
    """exp(-d(c_i, c_j) / T) over j != i, normalised: written independently of the module."""
    if distance == "sqeuclidean":
        d = ((codebook[i][None] - codebook) ** 2).sum(1)
    else:
        n = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
        d = 1.0 - n @ n[i]
    w = np.exp(-d / temperature)
    w[i] = 0.0
    return w / w.sum()


@pytest.mark.parametrize("mode", ["kernel", "shuffle"])
def test_eps_zero_is_exact_identity(mode):
    idx = torch.randint(0, 10, (2, 4, 5))
    out = QuantizedPerturbation(mode, eps=0.0)(idx, torch.randn(10, 3), _gen())
    assert torch.equal(out, idx)


@pytest.mark.parametrize("strategy", ["sparse", "dense"])
@pytest.mark.parametrize("eps", [0.1, 0.7])
def test_kernel_changed_fraction_matches_eps(strategy, eps):
    n = 20000
    idx = torch.randint(0, 32, (4, n // 4))
    out = QuantizedPerturbation("kernel", eps=eps, strategy=strategy)(idx, torch.randn(32, 8), _gen(1))
    frac = (out != idx).float().mean().item()
    sigma = (eps * (1 - eps) / n) ** 0.5
    assert abs(frac - eps) < 5 * sigma


@pytest.mark.parametrize("strategy", ["sparse", "dense"])
def test_kernel_never_returns_the_source_index(strategy):
    codebook = torch.randn(5, 2)
    codebook[3] = codebook[1]  # a duplicate codeword: distance 0 to another code must still be allowed
    idx = torch.arange(5).repeat(2, 400).reshape(2, -1)
    out = QuantizedPerturbation("kernel", eps=1.0, temperature=0.3, strategy=strategy)(idx, codebook, _gen(2))
    assert (out != idx).all()
    assert out.min() >= 0 and out.max() < 5


@pytest.mark.parametrize("strategy", ["sparse", "dense"])
@pytest.mark.parametrize("distance,temperature", [("sqeuclidean", 0.7), ("cosine", 0.2), ("sqeuclidean", 5.0)])
def test_kernel_draws_follow_the_neighbour_distribution(strategy, distance, temperature):
    torch.manual_seed(3)
    k, draws, source = 6, 30000, 2
    codebook = torch.randn(k, 3)
    idx = torch.full((3, draws // 3), source)
    q = QuantizedPerturbation("kernel", eps=1.0, temperature=temperature, distance=distance, strategy=strategy)
    out = q(idx, codebook, _gen(4))
    counts = np.bincount(out.flatten().numpy(), minlength=k)
    assert counts[source] == 0
    expected = _kernel_probs(codebook.double().numpy(), source, temperature, distance)
    keep = np.arange(k) != source
    stat, p_value = chisquare(counts[keep], expected[keep] * draws)
    assert p_value > 1e-3, (counts, expected * draws)


def test_kernel_distribution_is_not_uniform_when_distances_differ():
    """Guards the chi-square test itself: a uniform draw over j != i would be rejected."""
    codebook = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [0.0, 3.0]])
    idx = torch.zeros(1, 20000, dtype=torch.long)
    out = QuantizedPerturbation("kernel", eps=1.0, temperature=1.0)(idx, codebook, _gen(5))
    counts = np.bincount(out.flatten().numpy(), minlength=4)[1:]
    assert chisquare(counts).pvalue < 1e-6
    assert counts[0] > counts[1] and counts[0] > counts[2]


def test_low_temperature_picks_the_nearest_other_code():
    codebook = torch.tensor([[0.0], [1.0], [2.5], [10.0]])
    idx = torch.tensor([[0, 1, 2, 3]])
    out = QuantizedPerturbation("kernel", eps=1.0, temperature=1e-4)(idx, codebook, _gen())
    assert out.tolist() == [[1, 0, 1, 2]]


@pytest.mark.parametrize("mode", ["kernel", "shuffle"])
def test_generator_makes_draws_reproducible(mode):
    idx = torch.randint(0, 50, (2, 8, 8))
    codebook = torch.randn(50, 4)
    q = QuantizedPerturbation(mode, eps=0.5)
    assert torch.equal(q(idx, codebook, _gen(7)), q(idx, codebook, _gen(7)))
    assert not torch.equal(q(idx, codebook, _gen(7)), q(idx, codebook, _gen(8)))


def test_shuffle_preserves_each_image_multiset_and_moves_eps_fraction():
    b, h, w, eps = 3, 6, 7, 0.5
    idx = torch.stack([torch.randperm(100)[: h * w] for _ in range(b)]).reshape(b, h, w)  # distinct per image
    out = QuantizedPerturbation("shuffle", eps=eps)(idx, generator=_gen(9))
    for i in range(b):
        assert torch.equal(out[i].flatten().sort().values, idx[i].flatten().sort().values)
        assert (out[i] != idx[i]).sum().item() == round(eps * h * w)


def test_shuffle_keeps_indices_inside_their_image():
    idx = torch.stack([torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long)])
    out = QuantizedPerturbation("shuffle", eps=1.0)(idx, generator=_gen())
    assert torch.equal(out, idx)


@pytest.mark.parametrize(
    "kwargs",
    [dict(mode="swap"), dict(eps=1.5), dict(eps=-0.1), dict(temperature=0.0), dict(distance="l1"), dict(strategy="x")],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        QuantizedPerturbation(**kwargs)


def test_kernel_needs_codebook_and_valid_indices():
    q = QuantizedPerturbation("kernel", eps=0.5)
    with pytest.raises(ValueError, match="codebook"):
        q(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="indices must be in"):
        q(torch.full((1, 4), 9), torch.randn(4, 2))
    with pytest.raises(ValueError, match="integer indices"):
        q(torch.zeros(1, 4), torch.randn(4, 2))
