"""Tests for the crop survival model: max-over-crops semantics, config, save/load."""

from __future__ import annotations

import pytest
import torch

from survfed.common.survival.model import (
    CropSurvivalModel,
    ModelConfig,
    load_model,
    save_model,
)

S = 16


@pytest.fixture(scope="module")
def model() -> CropSurvivalModel:
    torch.manual_seed(0)
    return CropSurvivalModel("small", k=4, crop_size=S).eval()


def _batch(batch: int = 3, k: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    crops = torch.rand(batch, k, 1, S, S, S, generator=gen)
    present = torch.ones(batch, k, dtype=torch.bool)
    return crops, present


def test_output_shape_and_reference_computation(model):
    crops, present = _batch()
    present[1, 2:] = False
    crops[1, 2:] = 0.0
    g = model(crops, present)
    assert g.shape == (3,)
    # reference: explicit per-patient loop over that patient's present crops
    with torch.no_grad():
        for b in range(3):
            feats = model.crop_features(crops[b][present[b]])
            expected = model.out(feats.max(dim=0).values)
            torch.testing.assert_close(g[b : b + 1], expected, rtol=1e-5, atol=1e-5)


def test_permuting_crops_does_not_change_g(model):
    crops, present = _batch()
    present[0, 3] = False
    g = model(crops, present)
    perm = torch.tensor([2, 0, 3, 1])
    g_perm = model(crops[:, perm], present[:, perm])
    torch.testing.assert_close(g, g_perm, rtol=1e-5, atol=1e-6)


def test_masked_crop_cannot_change_the_max(model):
    crops, present = _batch()
    present[:, 1:] = False
    g = model(crops, present)
    wild = crops.clone()
    wild[:, 1:] = 1.0 + 10.0 * torch.rand_like(wild[:, 1:])  # anything at all in blank slots
    torch.testing.assert_close(model(wild, present), g)
    # while unmasking them does change g
    assert not torch.allclose(model(wild, torch.ones_like(present)), g)


def test_batch_composition_does_not_change_a_patients_g(model):
    crops, present = _batch(batch=4)
    present[2] = False
    together = model(crops, present)
    alone = torch.cat([model(crops[i : i + 1], present[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_patient_without_nodules_gets_the_blank_crop_value(model):
    crops, present = _batch(batch=2)
    present[1] = False
    g = model(crops, present)
    with torch.no_grad():
        blank = model.out(model.crop_features(torch.zeros(1, 1, S, S, S)))[0, 0]
        # the same value as a patient whose crops are all present but blank (zeros)
        all_blank = model(torch.zeros(1, 4, 1, S, S, S), torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(g[1], blank)
    torch.testing.assert_close(g[1:], all_blank)
    assert torch.isfinite(g).all()
    # gradient flows to the encoder through the "no nodule" value
    m = CropSurvivalModel("small", k=4, crop_size=S)
    m(crops[1:], present[1:]).sum().backward()
    assert m.encoder[2].conv.weight.grad.abs().sum() > 0  # (zeros give no grad to layer 0)


def test_shape_errors(model):
    crops, present = _batch()
    with pytest.raises(ValueError, match="crops must have shape"):
        model(crops[:, :3], present[:, :3])
    with pytest.raises(ValueError, match="present must have shape"):
        model(crops, present[:2])


def test_config_round_trip_and_validation():
    cfg = ModelConfig(encoder="small", k=3, crop_size=16, spacing_mm=1.5, hu_window=(-1000, 400))
    d = cfg.to_dict()
    assert d["hu_window"] == [-1000.0, 400.0]
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict({}) == ModelConfig()
    assert cfg.crop_kwargs() == {
        "k": 3,
        "size_vox": 16,
        "spacing_mm": 1.5,
        "hu_window": (-1000.0, 400.0),
    }
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict(d | {"dropout": 0.1})
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="densenet")
    with pytest.raises(ValueError, match="hu_window"):
        ModelConfig(hu_window=(400, -1000))
    with pytest.raises(ValueError, match="spacing_mm"):
        ModelConfig(spacing_mm=0)
    with pytest.raises(ValueError, match="k must"):
        ModelConfig(k=0)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    cfg = ModelConfig(encoder="small", k=4, crop_size=S, hidden=16)
    model = cfg.build_model()
    # make the weights differ from any fresh initialisation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    crops, present = _batch()
    present[0, 1:] = False
    path = save_model(tmp_path / "sub" / "model.pt", model, cfg)
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg
    assert not loaded.training
    torch.testing.assert_close(loaded(crops, present), model(crops, present), rtol=0, atol=0)
    # the file holds only plain types and tensors
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == cfg.to_dict()
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))


def test_save_load_errors(tmp_path):
    model = CropSurvivalModel("small", k=4, crop_size=S)
    with pytest.raises(ValueError, match="k: model 4 vs config 5"):
        save_model(tmp_path / "m.pt", model, ModelConfig(encoder="small", crop_size=S))
    with pytest.raises(FileNotFoundError, match="path"):
        load_model(tmp_path / "missing.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a survfed crop-survival model"):
        load_model(tmp_path / "other.pt")


def test_snapshot_mean_averages_float_weights_and_keeps_dtypes() -> None:
    from survfed.common.survival.snapshot import SnapshotMean

    mean = SnapshotMean()
    with pytest.raises(ValueError, match="no snapshot"):
        mean.mean()
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    mean.add(a)
    mean.add({k: v.numpy() for k, v in b.items()})  # numpy snapshots too (checkpoints)
    out = mean.mean()
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 4.0]))
    assert out["w"].dtype == torch.float32 and int(out["n"]) == 5 and mean.count == 2
    with pytest.raises(ValueError, match="same keys"):
        mean.add({"w": torch.zeros(2)})


def test_noisy_or_head_is_the_leaky_noisy_or_of_per_nodule_probabilities() -> None:
    """P = 1 - (1 - P_d) prod(1 - P_i) over present crops; no nodule: P = P_d; g unchanged."""
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="small", k=3, crop_size=16, cancer_head="noisy-or")
    model = cfg.build_model().eval()
    crops = torch.rand(3, 3, 1, 16, 16, 16)
    present = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    with torch.no_grad():
        g, logit = model.outputs(crops, present)
        enc = model.encoder(crops[present])
        p_i = torch.sigmoid(model.nodule_mlp(enc).squeeze(-1))
        p_d = torch.sigmoid(model.leak_logit)
    expected = torch.stack(
        [
            1 - (1 - p_d) * (1 - p_i[0]) * (1 - p_i[1]),
            1 - (1 - p_d) * (1 - p_i[2]),
            p_d,
        ]
    )
    torch.testing.assert_close(torch.sigmoid(logit), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, model(crops, present))
    # what is in a blank crop cannot change a patient's cancer probability
    other = crops.clone()
    other[0, 2] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(model.outputs(other, present)[1], logit)
    # the two-task head gives g as the cancer logit
    plain = ModelConfig(encoder="small", k=3, crop_size=16).build_model()
    g2, logit2 = plain.outputs(crops, present)
    assert logit2 is g2


def test_noisy_or_head_trains_through_the_two_task_loss(tmp_path) -> None:
    from survfed.common.survival.losses import two_task_loss

    torch.manual_seed(1)
    cfg = ModelConfig(encoder="small", k=2, crop_size=16, cancer_head="noisy-or")
    model = cfg.build_model()
    crops = torch.rand(6, 2, 1, 16, 16, 16)
    present = torch.ones(6, 2, dtype=torch.bool)
    g, logit = model.outputs(crops, present)
    y = torch.tensor([1.0, 0.0, 1.0, float("nan"), 0.0, 1.0])
    parts = two_task_loss(
        g, torch.ones(6), torch.arange(1.0, 7.0), y, cancer_logit=logit, cox_weight=0.0
    )
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logit[[0, 1, 2, 4, 5]], y[[0, 1, 2, 4, 5]]
    )
    torch.testing.assert_close(parts.bce, expected)
    parts.total.backward()
    assert model.leak_logit.grad is not None and model.nodule_mlp[0].weight.grad is not None
    path = save_model(tmp_path / "m.pt", model, cfg)
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg.cancer_head == "noisy-or"
    torch.testing.assert_close(loaded.leak_logit, model.leak_logit)


def test_nnet_encoder_starts_from_a_trained_detector() -> None:
    from survfed.common.detection.config import cpu_preset
    from survfed.common.detection.nnet import build_nnet
    from survfed.common.survival.encoders import load_detector_backbone

    torch.manual_seed(2)
    detector = build_nnet(cpu_preset()).state_dict()
    model = ModelConfig(encoder="nnet-small", k=2, crop_size=32).build_model()
    copied = load_detector_backbone(model.encoder, detector)
    own = model.encoder.nnet.state_dict()
    assert copied == len(own) > 10
    for name, value in own.items():
        torch.testing.assert_close(value, detector[name])
    wide = ModelConfig(encoder="nnet", k=2, crop_size=32).build_model()
    assert load_detector_backbone(wide.encoder, detector) == 0  # another width: nothing
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelConfig(encoder="nnet-small", crop_size=24).build_model()
