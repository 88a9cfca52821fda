"""Tests for survfed.common.survival.batching.SiteStratifiedBatchSampler."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from survfed.common.survival.batching import SitePlan, SiteStratifiedBatchSampler
from survfed.common.survival.losses import cox_nll


def _quiet(*args, **kwargs) -> SiteStratifiedBatchSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SiteStratifiedBatchSampler(*args, **kwargs)


def _random_cohort(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sites of random sizes (1..60) and event rates (0..1), shuffled together."""
    n_sites = int(rng.integers(1, 6))
    sites, events = [], []
    for s in range(n_sites):
        n = int(rng.integers(1, 61))
        rate = float(rng.choice([0.0, 0.02, 0.1, 0.5, 1.0]))
        sites += [f"site{s}"] * n
        events += list(rng.random(n) < rate)
    order = rng.permutation(len(sites))
    return np.asarray(sites)[order], np.asarray(events)[order]


@pytest.mark.parametrize("cox_only", [True, False])
def test_invariants_over_many_seeds_and_epochs(cox_only: bool):
    rng = np.random.default_rng(1234)
    for _ in range(150):
        sites, events = _random_cohort(rng)
        batch_size = int(rng.integers(2, 17))
        sampler = _quiet(sites, events, batch_size, seed=int(rng.integers(1000)), cox_only=cox_only)
        dropped = set(sampler.dropped_indices.tolist())
        plan_of = {p.site: p for p in sampler.plans}
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            seen = Counter(i for b in batches for i in b)
            # every kept sample exactly once per epoch; dropped ones never
            assert set(seen) == set(range(len(sites))) - dropped
            assert max(seen.values(), default=1) == 1
            for b in batches:
                assert len(b) >= 2
                assert len({sites[i] for i in b}) == 1  # one site per batch
                plan = plan_of[sites[b[0]]]
                if sampler.is_cox_batch(b):
                    assert plan.cox
                else:  # only zero-event sites, and only when asked for
                    assert not cox_only and plan.n_events == 0
                if plan.n_events >= math.ceil(plan.n_samples / batch_size):
                    # enough events: sizes as asked (batch_size 2 on an odd site needs one 3)
                    assert len(b) <= max(batch_size, 3)
            # what is dropped is exactly the one-patient sites (+ zero-event ones if cox_only)
            for p in sampler.plans:
                must_drop = p.n_samples < 2 or (cox_only and p.n_events == 0)
                assert (p.dropped_reason is not None) == must_drop
                assert (p.n_batches == 0) == must_drop


def test_deterministic_for_a_seed_and_epoch():
    rng = np.random.default_rng(0)
    sites = rng.choice(["a", "b", "c"], size=200)
    events = rng.random(200) < 0.3
    s1 = SiteStratifiedBatchSampler(sites, events, 8, seed=7)
    s2 = SiteStratifiedBatchSampler(sites, events, 8, seed=7)
    assert list(s1) == list(s2) == list(s1)  # re-iterating the same epoch repeats it
    s1.set_epoch(1)
    assert list(s1) != list(s2)
    s2.set_epoch(1)
    assert list(s1) == list(s2)
    other_seed = SiteStratifiedBatchSampler(sites, events, 8, seed=8)
    s1.set_epoch(0)
    assert list(other_seed) != list(s1)


def test_fewer_events_than_batches_gives_fewer_larger_batches():
    sites = ["x"] * 20
    events = [1, 0, 0, 1] + [0] * 16  # 2 events, 20 patients, batch_size 4 → 2 batches of 10
    sampler = SiteStratifiedBatchSampler(sites, events, 4, seed=0)
    assert sampler.plans == (SitePlan("x", 20, 2, 2, True),)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(len(b) for b in batches) == [10, 10]
        assert all(sum(events[i] for i in b) == 1 for b in batches)
    one_event = SiteStratifiedBatchSampler(["y"] * 9, [0] * 8 + [1], 2)
    assert [sorted(b) for b in one_event] == [list(range(9))]  # the whole site, one batch


def test_batch_sizes_are_balanced_and_never_one():
    sampler = SiteStratifiedBatchSampler(["s"] * 9, [1] * 9, 4)
    assert sorted(len(b) for b in sampler) == [3, 3, 3]  # not 4 + 4 + 1
    sampler = SiteStratifiedBatchSampler(["s"] * 3, [1, 1, 1], 2)
    assert [len(b) for b in sampler] == [3]  # 2 + 1 would leave a batch of one


def test_single_patient_and_zero_event_sites():
    sites = ["big"] * 6 + ["solo"] + ["quiet"] * 5
    events = [1, 0, 1, 0, 1, 0] + [1] + [0] * 5
    with pytest.warns(UserWarning, match="'solo'.*1 patient.*'quiet'.*no events"):
        sampler = SiteStratifiedBatchSampler(sites, events, 3)
    assert sampler.dropped_indices.tolist() == [6, 7, 8, 9, 10, 11]
    assert {i for b in sampler for i in b} == set(range(6))
    plans = {p.site: p for p in sampler.plans}
    assert plans["solo"].n_batches == 0 and "1 patient" in str(plans["solo"].dropped_reason)
    assert plans["quiet"].n_batches == 0 and plans["quiet"].cox is False

    with pytest.warns(UserWarning, match="'solo'"):
        keep_quiet = SiteStratifiedBatchSampler(sites, events, 3, cox_only=False)
    assert keep_quiet.dropped_indices.tolist() == [6]
    quiet = [b for b in keep_quiet if not keep_quiet.is_cox_batch(b)]
    assert sorted(i for b in quiet for i in b) == [7, 8, 9, 10, 11]
    assert sorted(len(b) for b in quiet) == [2, 3]


def test_every_cox_batch_gives_a_finite_loss_through_a_dataloader():
    """End to end: DataLoader(batch_sampler=...) + cox_nll never hits the no-event error."""
    rng = np.random.default_rng(5)
    n = 300
    sites = rng.choice(["a", "b", "c", "d"], size=n, p=[0.5, 0.3, 0.15, 0.05])
    events = rng.random(n) < 0.15
    times = torch.tensor(rng.integers(1, 30, size=n), dtype=torch.float64)  # ties on purpose
    data = TensorDataset(torch.randn(n, dtype=torch.float64), torch.tensor(events), times)
    sampler = SiteStratifiedBatchSampler(sites, events, 16, seed=3)
    loader = DataLoader(data, batch_sampler=sampler)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        n_seen = 0
        for g, e, t in loader:
            loss = cox_nll(g, e, t)
            assert torch.isfinite(loss)
            n_seen += len(g)
        assert n_seen == n - len(sampler.dropped_indices)


def test_unshuffled_sampler_keeps_site_order():
    sampler = SiteStratifiedBatchSampler([0, 0, 0, 0, 1, 1], [1, 0, 1, 0, 0, 1], 2, shuffle=False)
    assert list(sampler) == [[0, 1], [2, 3], [5, 4]]


def test_input_validation():
    with pytest.raises(ValueError, match="events"):
        SiteStratifiedBatchSampler(["a", "a"], [1], 2)
    with pytest.raises(ValueError, match="events"):
        SiteStratifiedBatchSampler(["a", "a"], [1, 2], 2)
    with pytest.raises(ValueError, match="batch_size"):
        SiteStratifiedBatchSampler(["a", "a"], [1, 0], 1)
    with pytest.raises(TypeError, match="batch_size"):
        SiteStratifiedBatchSampler(["a", "a"], [1, 0], 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sites"):
        SiteStratifiedBatchSampler([], [], 2)
    sampler = SiteStratifiedBatchSampler(["a", "a"], [1, 0], 2)
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
