"""Tests for detector training, FedProx, saving, and learning on synthetic scans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survfed.common.detection.config import cpu_preset
from survfed.common.detection.inference import detect
from survfed.common.detection.metrics import detection_metrics
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.sampling import PatchSampler
from survfed.common.detection.synthetic import synthetic_scan
from survfed.common.detection.train import (
    load_detector,
    save_detector,
    train_detector,
    train_detector_epoch,
)

TINY = cpu_preset(width=4, patch_size=32, nodule_margin_vox=6, tile_size=64)


@pytest.fixture(scope="module")
def tiny_scans():
    rng = np.random.default_rng(1)
    return [synthetic_scan(rng, (32, 48, 48), (6.0, 9.0), vessels=2) for _ in range(2)]


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_epoch_stats_and_determinism(tiny_scans):
    runs = []
    for _ in range(2):
        model, history = train_detector(tiny_scans, TINY, epochs=2, samples_per_epoch=4, seed=7)
        runs.append(_weights(model))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)  # seeded end to end
    stats = history[-1]
    for key in ("loss", "cls", "reg", "prox", "seconds", "patches_per_s"):
        assert np.isfinite(stats[key]), key
    assert stats["n_patches"] == 4 and stats["n_batches"] == 2 and stats["prox"] == 0
    assert stats["n_neg"] == 4 * TINY.num_hard and stats["loss"] == pytest.approx(
        stats["cls"] + stats["reg"]
    )
    other, _ = train_detector(tiny_scans, TINY, epochs=1, samples_per_epoch=4, seed=8)
    assert not torch.equal(_weights(other), runs[0])


def test_overfits_a_fixed_batch(tiny_scans):
    torch.manual_seed(0)
    model = build_nnet(TINY)
    cfg = TINY.replace(positive_fraction=1.0, resize_range=(1.0, 1.0), flip=False)
    sampler = PatchSampler(tiny_scans[:1], cfg, seed=0, samples_per_epoch=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = [
        train_detector_epoch(model, sampler, opt, cfg, device="cpu", epoch=0)["loss"]
        for _ in range(25)
    ]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_overfits_a_fixed_batch(tiny_scans):
    """The same fixed batch as on the CPU, on CUDA with bf16 autocast: the loss halves."""
    torch.manual_seed(0)
    model = build_nnet(TINY).cuda()
    cfg = TINY.replace(positive_fraction=1.0, resize_range=(1.0, 1.0), flip=False)
    sampler = PatchSampler(tiny_scans[:1], cfg, seed=0, samples_per_epoch=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    stats = [
        train_detector_epoch(model, sampler, opt, cfg, device="cuda", epoch=0, amp=True)
        for _ in range(25)
    ]
    losses = [s["loss"] for s in stats]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())


def test_fedprox_term(tiny_scans):
    torch.manual_seed(0)
    model = build_nnet(TINY)
    sampler = PatchSampler(tiny_scans, TINY, seed=0, samples_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = train_detector_epoch(
        model,
        sampler,
        opt,
        TINY,
        device="cpu",
        epoch=0,
        batch_size=1,
        proximal_mu=10.0,
        global_params=global_params,
        max_grad_norm=1.0,
    )
    # the first step starts at the global weights (prox 0), the second one has moved
    assert stats["n_batches"] == 2 and stats["prox"] > 0
    with pytest.raises(ValueError, match="global_params"):
        train_detector_epoch(model, sampler, opt, TINY, device="cpu", epoch=0, proximal_mu=1.0)
    with pytest.raises(ValueError, match="global_params lacks"):
        train_detector_epoch(
            model, sampler, opt, TINY, device="cpu", epoch=0, proximal_mu=1.0, global_params={}
        )


def test_save_and_load_round_trip(tmp_path, small_scan):
    torch.manual_seed(0)
    cfg = TINY.replace(norm="voxel")
    model = build_nnet(cfg)
    path = save_detector(tmp_path / "det" / "model.pt", model, cfg)
    loaded, loaded_cfg = load_detector(path)
    assert loaded_cfg == cfg and not loaded.training
    torch.testing.assert_close(_weights(loaded), _weights(model))
    model.eval()
    np.testing.assert_array_equal(
        detect(model, small_scan.image, cfg), detect(loaded, small_scan.image, loaded_cfg)
    )
    with pytest.raises(ValueError, match="config does not describe model"):
        save_detector(tmp_path / "x.pt", model, cfg.replace(width=8))
    with pytest.raises(FileNotFoundError, match="path"):
        load_detector(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a survfed N-Net detector"):
        load_detector(tmp_path / "other.pt")


LEARN = cpu_preset(patch_size=48)


@pytest.mark.slow
def test_learns_to_find_synthetic_nodules():
    """The CPU preset (48³ patches) finds held-out synthetic nodules in its top 5."""
    rng = np.random.default_rng(0)

    def scans(n):
        return [synthetic_scan(rng, (64, 96, 96), tuple(rng.uniform(5, 14, 3))) for _ in range(n)]

    train, held_out = scans(8), scans(6)
    model, history = train_detector(train, LEARN, epochs=10, lr=3e-3, seed=0)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    model.eval()
    props = [detect(model, s.image, LEARN) for s in held_out]
    m = detection_metrics(props, [s.nodules for s in held_out])
    assert m.recall_top_k >= 0.8, m.to_dict()
