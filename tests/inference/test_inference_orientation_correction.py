"""Orientation correction (issue 27): vqseg_bundle.inferers.orientation_correction with an exact oracle classifier,
the saved-classifier loading and its errors, and the configs that wire it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from vqseg_bundle.inferers import OrientationCorrectingInferer, ResizedSliceInferer, correction_mode, detect_orientation
from vqseg_bundle.inferers.orientation_correction import load_orientation_classifier, volume_slices
from vqseg_bundle.networks import OrientationClassifier
from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS

REPO = Path(__file__).resolve().parents[2]
S = 16


def _reference() -> torch.Tensor:
    """An (S, S) slice that differs from each of its 7 turns / mirrors: a 5 x 3 block near one corner."""
    ref = torch.zeros(S, S)
    ref[9:14, 11:14] = 1.0
    ref[2, 3] = 0.5
    return ref


class OracleClassifier(OrientationClassifier):
    """Scores transform ``T`` by how close ``T``'s inverse brings each slice to the reference: exact, no training."""

    def __init__(self) -> None:
        super().__init__(in_channels=1, image_size=S, channels=[2])
        self.register_buffer("ref", _reference())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = [-((t.invert(x[:, 0]) - self.ref) ** 2).sum(dim=(-2, -1)) for t in DIHEDRAL_TRANSFORMS]
        return torch.stack(scores, dim=1) * 10.0


class TopHalfNet(torch.nn.Module):
    """Class 1 where the intensity is above 0.5, only in the slice's top half: depends on the orientation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([0.5 - x, x - 0.5], dim=1) * 20.0
        logits[:, 1, x.shape[2] // 2 :] = -20.0
        return logits


def _volume(depth: int = 3) -> torch.Tensor:
    """(1, 1, S, S, depth): the reference in every slice."""
    return _reference()[None, None, :, :, None].repeat(1, 1, 1, 1, depth)


def test_detect_orientation_finds_each_transform():
    oracle = OracleClassifier()
    volume = _volume()[0]
    for t in DIHEDRAL_TRANSFORMS:
        decision = detect_orientation(oracle, t.apply(volume, (1, 2)))
        assert decision["transform"] == t.name
        assert decision["confidence"] > 0.99 and decision["slices"] == 3
        assert decision.dihedral == t


def test_volume_slices_layout_and_slice_axis():
    volume = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)
    assert volume_slices(volume, -1, 8).shape == (3, 2, 8, 8)
    assert volume_slices(volume, 0, 8).shape == (4, 2, 8, 8)
    assert volume_slices(volume[..., 0], -1, 8).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="expected a"):
        volume_slices(torch.zeros(4), -1, 8)


def test_correcting_inferer_is_equivariant_and_leaves_identity_alone():
    base = ResizedSliceInferer(S)
    net = TopHalfNet()
    corrector = OrientationCorrectingInferer(base, OracleClassifier(), enabled=True)
    volume = _volume()
    identity = corrector(volume, net)
    assert torch.equal(identity, base(volume, net))  # the identity is not turned
    plain_outputs = []
    for t in DIHEDRAL_TRANSFORMS:
        turned = t.apply(volume, (2, 3))
        corrected = corrector(turned, net)
        # the prediction of a turned input is the turned prediction of the canonical one, exactly
        assert torch.equal(corrected, t.apply(identity, (2, 3)))
        plain_outputs.append(t.invert(base(turned, net), (2, 3)))
    # without correction the orientations disagree (the network depends on the orientation)
    assert any(not torch.equal(p, plain_outputs[0]) for p in plain_outputs[1:])
    assert [d["corrected"] for d in corrector.decisions] == [False] + [False] + [True] * 7


def test_correcting_inferer_keeps_metadata_and_logs_the_file(caplog):
    base = ResizedSliceInferer(S)
    corrector = OrientationCorrectingInferer(base, OracleClassifier())
    turned = DIHEDRAL_TRANSFORMS[2].apply(_volume(), (2, 3))
    meta_input = MetaTensor(turned, meta={"filename_or_obj": "/data/scan_07.nii.gz"})
    with caplog.at_level(logging.INFO):
        out = corrector(meta_input, TopHalfNet())
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "/data/scan_07.nii.gz"
    lines = [r.getMessage() for r in caplog.records if "orientation:" in r.getMessage()]
    assert len(lines) == 1 and "scan_07.nii.gz" in lines[0] and "rot180" in lines[0]


def test_low_confidence_is_not_turned():
    class Unsure(OracleClassifier):
        def forward(self, x):
            return super().forward(x) * 1e-4  # nearly uniform over the 8

    corrector = OrientationCorrectingInferer(ResizedSliceInferer(S), Unsure(), min_confidence=0.9)
    turned = DIHEDRAL_TRANSFORMS[1].apply(_volume(), (2, 3))
    out = corrector(turned, TopHalfNet())
    assert torch.equal(out, ResizedSliceInferer(S)(turned, TopHalfNet()))
    assert corrector.decisions[0]["transform"] == "rot90" and not corrector.decisions[0]["corrected"]
    with pytest.raises(ValueError, match="min_confidence"):
        OrientationCorrectingInferer(ResizedSliceInferer(S), Unsure(), min_confidence=1.5)


def test_correction_mode_values():
    assert correction_mode(True) == "true" and correction_mode("False") == "false" and correction_mode("auto") == "auto"
    with pytest.raises(ValueError, match="orientation_correction"):
        correction_mode("sometimes")


def _save_classifier(folder: Path, reliable: bool = True, channels=(4,)) -> Path:
    net = OrientationClassifier(in_channels=1, image_size=S, channels=list(channels))
    path = folder / "orientation.pt"
    torch.save(net.state_dict(), path)
    record = {"network": {"in_channels": 1, "image_size": S, "channels": list(channels)}, "reliable": reliable}
    (folder / "orientation.json").write_text(json.dumps(record))
    return path


def test_missing_classifier_auto_warns_true_fails_false_reads_nothing(tmp_path, caplog):
    base, net, volume = ResizedSliceInferer(S), TopHalfNet(), _volume()
    missing = tmp_path / "orientation.pt"
    with caplog.at_level(logging.WARNING):
        out = OrientationCorrectingInferer(base, missing, enabled="auto")(volume, net)
    assert torch.equal(out, base(volume, net))
    assert any(str(missing) in r.getMessage() and "train_orientation" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match=r"orientation\.pt.*--orientation_correction false"):
        OrientationCorrectingInferer(base, missing, enabled=True).load()
    off = OrientationCorrectingInferer(base, missing, enabled="false")
    assert torch.equal(off(volume, net), base(volume, net)) and off.decisions == []


def test_unreliable_classifier_is_not_used(tmp_path, caplog):
    path = _save_classifier(tmp_path, reliable=False)
    corrector = OrientationCorrectingInferer(ResizedSliceInferer(S), path, enabled=True)
    with caplog.at_level(logging.WARNING):
        corrector.load()
    assert corrector.classifier is None and any("not reliable" in r.getMessage() for r in caplog.records)
    corrector(_volume(), TopHalfNet())
    assert corrector.decisions == []


def test_load_saved_classifier_and_foreign_weights(tmp_path):
    path = _save_classifier(tmp_path)
    classifier, record = load_orientation_classifier(path)
    assert isinstance(classifier, OrientationClassifier) and not classifier.training and record["reliable"]
    corrector = OrientationCorrectingInferer(ResizedSliceInferer(S), path, enabled=True).load()
    assert corrector.classifier is not None
    torch.save({"conv.weight": torch.zeros(3)}, path)  # weights of another network
    with pytest.raises(ValueError, match=r"orientation\.pt: not the weights"):
        load_orientation_classifier(path)
    (tmp_path / "orientation.json").write_text("{}")
    with pytest.raises(ValueError, match=r"orientation\.json: not an orientation classifier record"):
        load_orientation_classifier(path)


def test_orientation_classifier_shapes():
    net = OrientationClassifier(in_channels=1, image_size=32, channels=[4, 8])
    assert net(torch.zeros(3, 1, 32, 32)).shape == (3, 8)
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        OrientationClassifier(image_size=30, channels=[4, 8])


def test_configs_wire_the_correction(tmp_path):
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "inference.yaml")])
    parser.update({"ckpt_path": str(tmp_path / "model.pt"), "image_size": 32})
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, OrientationCorrectingInferer) and inferer.mode == "auto"
    assert isinstance(inferer.inferer, ResizedSliceInferer)
    assert Path(inferer._source) == tmp_path / "orientation.pt"  # beside the model
    evaluate = ConfigParser()
    evaluate.read_config([str(REPO / "configs" / "train.yaml"), str(REPO / "configs" / "evaluate.yaml")])
    evaluate.update({"ckpt_path": str(tmp_path / "model.pt"), "orientation_correction": False, "image_size": 32})
    wrapped = evaluate.get_parsed_content("validate#evaluator#inferer")
    assert isinstance(wrapped, OrientationCorrectingInferer) and not wrapped.enabled
    train = ConfigParser()
    train.read_config([str(REPO / "configs" / "train.yaml")])
    assert train["orientation_correction"] == "auto" and train["weak_aug"]["dihedral"] is False
    assert "$@fit_orientation" in train["training"] and "$@fit_orientation" in train["train_orientation"]


def test_composition_table_is_the_dihedral_group():
    from vqseg_bundle.inferers.orientation_correction import COMPOSE, INVERSE

    grid = torch.arange(12.0).reshape(3, 4)  # not square: a quarter turn swaps the sizes
    for a, ta in enumerate(DIHEDRAL_TRANSFORMS):
        assert COMPOSE[0][a] == a and COMPOSE[a][0] == a
        assert torch.equal(DIHEDRAL_TRANSFORMS[INVERSE[a]].apply(ta.apply(grid)), grid)
        for b, tb in enumerate(DIHEDRAL_TRANSFORMS):
            assert torch.equal(DIHEDRAL_TRANSFORMS[COMPOSE[a][b]].apply(grid), ta.apply(tb.apply(grid)))


def test_eight_view_decision_turns_with_the_input_for_any_classifier():
    """Even an untrained classifier (whose single-view decisions are arbitrary) gives decisions that move with the
    input: the decision on g(x) is g after the decision on x, with the same confidence."""
    from vqseg_bundle.inferers.orientation_correction import COMPOSE

    torch.manual_seed(0)
    classifier = OrientationClassifier(in_channels=1, image_size=S, channels=[4, 8])
    volume = torch.rand(1, 20, 12, 3)  # non-square slices, resized to S x S
    base = detect_orientation(classifier, volume)
    base_index = [t.name for t in DIHEDRAL_TRANSFORMS].index(base["transform"])
    single = set()
    for g_index, g in enumerate(DIHEDRAL_TRANSFORMS):
        turned = g.apply(volume, (1, 2))
        decision = detect_orientation(classifier, turned)
        assert decision["transform"] == DIHEDRAL_TRANSFORMS[COMPOSE[g_index][base_index]].name
        assert decision["confidence"] == pytest.approx(base["confidence"], abs=1e-5)
        one = detect_orientation(classifier, turned, equivariant=False).dihedral
        single.add(tuple(one.invert(turned, (1, 2)).flatten().tolist()))
    assert len(single) > 1  # the single view alone is not equivariant for this classifier


def test_max_slices_scores_a_subset_away_from_the_ends():
    oracle = OracleClassifier()
    volume = _volume(depth=9)[0]
    volume[..., 0] = 0.0  # an end slice with nothing on it
    decision = detect_orientation(oracle, DIHEDRAL_TRANSFORMS[3].apply(volume, (1, 2)), max_slices=4)
    assert decision["slices"] == 4 and decision["transform"] == DIHEDRAL_TRANSFORMS[3].name
    assert detect_orientation(oracle, volume, max_slices=20)["slices"] == 9  # fewer slices than the cap: all
    with pytest.raises(ValueError, match="max_slices"):
        detect_orientation(oracle, volume, max_slices=0)
    corrector = OrientationCorrectingInferer(ResizedSliceInferer(S), oracle, max_slices=2)
    corrector(_volume(depth=5), TopHalfNet())
    assert corrector.decisions[0]["slices"] == 2


def test_settings_from_the_classifier_record(tmp_path):
    path = _save_classifier(tmp_path)
    record = json.loads((tmp_path / "orientation.json").read_text())
    (tmp_path / "orientation.json").write_text(
        json.dumps({**record, "inference": {"min_confidence": 0.75, "max_slices": 3}})
    )
    corrector = OrientationCorrectingInferer(
        ResizedSliceInferer(S), path, enabled=True, min_confidence="record", max_slices="record"
    ).load()
    assert corrector.min_confidence == 0.75 and corrector.max_slices == 3
    (tmp_path / "orientation.json").write_text(json.dumps(record))  # a record without them
    with pytest.raises(ValueError, match=r"orientation\.json: no recorded \['min_confidence'\]"):
        OrientationCorrectingInferer(ResizedSliceInferer(S), path, enabled=True, min_confidence="record").load()
    with pytest.raises(ValueError, match="needs the classifier's path"):
        OrientationCorrectingInferer(ResizedSliceInferer(S), OracleClassifier(), max_slices="record")
