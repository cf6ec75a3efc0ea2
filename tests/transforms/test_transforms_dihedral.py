"""The 8 in-plane dihedral transforms: distinct, exact, invertible, named; any layout via its in-plane dims."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS, dihedral_transform


def test_eight_distinct_transforms_identity_first():
    x = torch.rand(5, 7)
    outs = [t.apply(x) for t in DIHEDRAL_TRANSFORMS]
    assert len(DIHEDRAL_TRANSFORMS) == 8 and DIHEDRAL_TRANSFORMS[0].name == "identity"
    torch.testing.assert_close(outs[0], x)
    for i in range(8):
        for j in range(i + 1, 8):
            assert outs[i].shape != outs[j].shape or not torch.equal(outs[i], outs[j]), (i, j)
    # a quarter turn swaps the two sizes of a rectangular grid
    assert [tuple(o.shape) for o in outs] == [(5, 7), (7, 5), (5, 7), (7, 5)] * 2


@pytest.mark.parametrize("dims", [(-2, -1), (1, 2), (2, 3)])
def test_invert_undoes_apply(dims):
    x = torch.rand(2, 3, 6, 4)
    for t in DIHEDRAL_TRANSFORMS:
        torch.testing.assert_close(t.invert(t.apply(x, dims), dims), x)


def test_the_group_is_closed_and_turns_compose():
    """Two quarter turns are a half turn; mirroring twice is the identity: the set is the dihedral group."""
    x = torch.rand(6, 6)
    outs = [t.apply(x) for t in DIHEDRAL_TRANSFORMS]
    for a in DIHEDRAL_TRANSFORMS:
        for b in DIHEDRAL_TRANSFORMS:
            composed = b.apply(a.apply(x))
            assert any(torch.equal(composed, o) for o in outs)
    rot90 = dihedral_transform("rot90")
    torch.testing.assert_close(rot90.apply(rot90.apply(x)), dihedral_transform("rot180").apply(x))
    mirror = dihedral_transform("mirror")
    torch.testing.assert_close(mirror.apply(mirror.apply(x)), x)
    torch.testing.assert_close(mirror.apply(x), torch.flip(x, (0,)))


def test_names_round_trip_and_unknown_name_is_named():
    names = [t.name for t in DIHEDRAL_TRANSFORMS]
    assert len(set(names)) == 8 and "rot180+mirror" in names
    for t in DIHEDRAL_TRANSFORMS:
        assert dihedral_transform(t.name) == t
    with pytest.raises(ValueError, match="rot45"):
        dihedral_transform("rot45")
