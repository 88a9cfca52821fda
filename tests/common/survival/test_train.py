"""Tests for the local training epoch and prediction."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from survfed.common.survival.batching import SiteStratifiedBatchSampler
from survfed.common.survival.model import CropSurvivalModel
from survfed.common.survival.train import LossConfig, predict, proximal_term, train_epoch

S, K = 16, 3


class ArrayCrops(Dataset):
    """Test scaffolding: patients held in arrays, items in the train.py format."""

    def __init__(self, crops, present, times, events, cancer, sites):
        self.crops, self.present = crops, present
        self.times, self.events, self.cancer, self.sites = times, events, cancer, sites

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> dict:
        return {
            "crops": torch.from_numpy(self.crops[i]),
            "present": torch.from_numpy(self.present[i]),
            "time": torch.tensor(self.times[i]),
            "event": torch.tensor(self.events[i]),
            "cancer": torch.tensor(self.cancer[i]),
            "site": torch.tensor(self.sites[i]),
        }


def _cohort(n: int, seed: int) -> ArrayCrops:
    """Risk r ~ U(0, 1) per patient; its biggest nodule is a sphere of radius 2 + 4r voxels and
    brightness 0.4 + 0.5r; hazard exp(10r) (Harrell's C of the true risk ~0.9); ~40% censored;
    cancer = r > 0.5."""
    rng = np.random.default_rng(seed)
    risk = rng.uniform(0, 1, n)
    zz, yy, xx = np.mgrid[:S, :S, :S] - (S - 1) / 2
    r2 = zz**2 + yy**2 + xx**2
    crops = np.full((n, K, 1, S, S, S), 0.1, np.float32)
    crops += rng.normal(0, 0.02, crops.shape).astype(np.float32)
    present = np.zeros((n, K), bool)
    for i in range(n):
        n_nod = rng.integers(0, K + 1)
        present[i, :n_nod] = True
        crops[i, n_nod:] = 0.0  # blank crops as extract_crops makes them
        if n_nod:
            crops[i, 0, 0][r2 <= (2 + 4 * risk[i]) ** 2] = 0.4 + 0.5 * risk[i]
            for j in range(1, n_nod):  # small, faint distractors
                crops[i, j, 0][r2 <= 2.0] = 0.3
    # patients without a nodule keep their risk through time only (the model cannot see it)
    t = rng.exponential(1.0 / np.exp(10 * risk)) * 365
    c = rng.exponential(4 * 365 * np.exp(-5), n)
    events = (t <= c).astype(np.float32)
    times = np.minimum(t, c).astype(np.float32)
    cancer = (risk > 0.5).astype(np.float32)
    cancer[rng.uniform(size=n) < 0.2] = np.nan  # some labels unknown
    sites = np.repeat(np.arange(2), math.ceil(n / 2))[:n]
    return ArrayCrops(crops, present, times, events, cancer, sites)


def _c_index(data: ArrayCrops, g: np.ndarray) -> float:
    """Harrell's C over patients with at least one nodule (the others carry no image signal)."""
    from sksurv.metrics import concordance_index_censored

    seen = data.present.any(axis=1)
    return concordance_index_censored(data.events[seen].astype(bool), data.times[seen], g[seen])[0]


def test_training_learns_an_obvious_signal():
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    train, test = _cohort(64, seed=1), _cohort(48, seed=2)
    model = CropSurvivalModel("small", k=K, crop_size=S)
    c_init = _c_index(test, predict(model, test, device="cpu", batch_size=16))
    assert c_init < 0.7  # control: the untrained network does not already rank well
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sampler = SiteStratifiedBatchSampler(train.sites, train.events, batch_size=16, seed=0)
    start = time.perf_counter()
    history = []
    for epoch in range(12):
        sampler.set_epoch(epoch)
        history.append(train_epoch(model, train, sampler, opt, LossConfig(), device="cpu"))
    elapsed = time.perf_counter() - start
    assert history[0]["n_patients"] == 64 and history[0]["n_batches"] == 4
    assert np.mean([h["loss"] for h in history[-3:]]) < np.mean([h["loss"] for h in history[:3]])
    g = predict(model, test, device="cpu", batch_size=16)
    assert g.shape == (48,) and np.isfinite(g).all()
    assert _c_index(test, g) > 0.8
    # the cancer probability sigmoid(g) ranks the labelled cancers too
    lab = test.present.any(axis=1) & ~np.isnan(test.cancer)
    assert roc_auc_score(test.cancer[lab], g[lab]) > 0.85
    assert elapsed < 60


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_learns_the_same_signal():
    """The obvious-signal cohort on CUDA with bf16 autocast: the Cox loss (kept in float32)
    falls and the held-out ranking reaches the CPU test's bar."""
    from survfed.common.survival.metrics import harrell_c

    torch.manual_seed(0)
    train, test = _cohort(64, seed=1), _cohort(48, seed=2)
    model = CropSurvivalModel("small", k=K, crop_size=S).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sampler = SiteStratifiedBatchSampler(train.sites, train.events, batch_size=16, seed=0)
    history = []
    for epoch in range(12):
        sampler.set_epoch(epoch)
        history.append(
            train_epoch(model, train, sampler, opt, LossConfig(), device="cuda", amp=True)
        )
    assert all(np.isfinite(h["loss"]) for h in history)
    assert np.mean([h["loss"] for h in history[-3:]]) < np.mean([h["loss"] for h in history[:3]])
    g = predict(model, test, device="cuda", batch_size=16, amp=True)
    seen = test.present.any(axis=1)
    assert g.shape == (48,) and np.isfinite(g).all()
    assert harrell_c(g[seen], test.times[seen], test.events[seen]) > 0.8


def test_epoch_statistics_match_a_direct_loss_computation():
    from survfed.common.survival.losses import two_task_loss

    torch.manual_seed(0)
    data = _cohort(12, seed=3)
    model = CropSurvivalModel("small", k=K, crop_size=S)
    sampler = SiteStratifiedBatchSampler(data.sites, data.events, batch_size=6, seed=0)
    batches = list(sampler)
    # with lr = 0 the weights never move, so each batch loss can be recomputed afterwards
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = LossConfig(cox_weight=0.7, bce_weight=0.3, ties="breslow")
    stats = train_epoch(model, data, sampler, opt, cfg, device="cpu")
    total = weight = 0.0
    with torch.no_grad():
        for idx in batches:
            items = [data[i] for i in idx]
            g = model(
                torch.stack([it["crops"] for it in items]),
                torch.stack([it["present"] for it in items]),
            )
            parts = two_task_loss(
                g,
                torch.stack([it["event"] for it in items]),
                torch.stack([it["time"] for it in items]),
                torch.stack([it["cancer"] for it in items]),
                cox_weight=0.7,
                bce_weight=0.3,
                ties="breslow",
            )
            total += float(parts.total) * len(idx)
            weight += len(idx)
    assert stats["loss"] == pytest.approx(total / weight, rel=1e-5)
    assert stats["n_patients"] == 12 and stats["prox"] == 0.0
    assert stats["n_events"] == int(data.events.sum())
    assert stats["crops_per_s"] > 0


def test_fedprox_term_is_added_and_pulls_towards_global():
    torch.manual_seed(0)
    data = _cohort(12, seed=4)
    model = CropSurvivalModel("small", k=K, crop_size=S)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    # move away from the global weights by a known amount
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    n_params = sum(p.numel() for p in model.parameters())
    pairs = [(p, global_params[n]) for n, p in model.named_parameters()]
    expected = 0.5 * 2.0 * n_params * 0.01**2
    assert float(proximal_term(pairs, 2.0).detach()) == pytest.approx(expected, rel=1e-4)

    sampler = SiteStratifiedBatchSampler(data.sites, data.events, batch_size=6, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_epoch(
        model,
        data,
        sampler,
        opt,
        LossConfig(),
        device="cpu",
        proximal_mu=2.0,
        global_params=global_params,
    )
    assert stats["prox"] == pytest.approx(expected, rel=1e-4)
    # a positional list works the same
    as_list = [global_params[n].numpy() for n, _ in model.named_parameters()]
    stats2 = train_epoch(
        model,
        data,
        sampler,
        opt,
        LossConfig(),
        device="cpu",
        proximal_mu=2.0,
        global_params=as_list,
    )
    assert stats2["prox"] == pytest.approx(expected, rel=1e-4)

    # with a huge mu and only the proximal gradient mattering, SGD moves back to global
    opt = torch.optim.SGD(model.parameters(), lr=4e-3)  # each step shrinks w - w_g by 0.6
    train_epoch(
        model,
        data,
        sampler,
        opt,
        LossConfig(),
        device="cpu",
        proximal_mu=100.0,
        global_params=global_params,
    )
    dist = sum(
        float((p.detach() - global_params[n]).pow(2).sum()) for n, p in model.named_parameters()
    )
    assert dist < 0.2 * n_params * 0.01**2


def test_argument_errors():
    data = _cohort(8, seed=5)
    model = CropSurvivalModel("small", k=K, crop_size=S)
    sampler = SiteStratifiedBatchSampler(data.sites, data.events, batch_size=4, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="global_params is required"):
        train_epoch(model, data, sampler, opt, LossConfig(), device="cpu", proximal_mu=0.1)
    with pytest.raises(ValueError, match="proximal_mu"):
        train_epoch(model, data, sampler, opt, LossConfig(), device="cpu", proximal_mu=-1)
    with pytest.raises(ValueError, match="global_params has 1 arrays"):
        train_epoch(
            model,
            data,
            sampler,
            opt,
            LossConfig(),
            device="cpu",
            proximal_mu=0.1,
            global_params=[np.zeros(3)],
        )
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, data, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="cox_weight and bce_weight"):
        LossConfig(cox_weight=0, bce_weight=0)
    with pytest.raises(ValueError, match="ties"):
        LossConfig(ties="exact")
    assert LossConfig.from_dict(LossConfig(bce_weight=0.5).to_dict()) == LossConfig(bce_weight=0.5)
