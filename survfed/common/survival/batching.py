"""Site-stratified mini-batches for the mini-batched Cox loss (seed 000, eq. 5).

The mini-batched Cox loss uses the batch as the risk set, so a batch must (a) hold patients
of one site only (risk sets are site-local, see DESIGN.md), (b) hold at least one event
(otherwise its partial likelihood is constant) and (c) hold at least two patients (a
one-patient risk set has likelihood 1 and trains nothing). :class:`SiteStratifiedBatchSampler`
guarantees all three for every batch it marks as a Cox batch.

Decisions for degenerate sites (all recorded in :attr:`SiteStratifiedBatchSampler.plans`):

* **Fewer events than batches.** A site with ``n`` patients and ``e >= 1`` events gets
  ``b = min(ceil(n / batch_size), e, n // 2)`` batches of near-equal size (sizes differ by at
  most 1). When ``e < ceil(n / batch_size)`` the batches are therefore *fewer and larger*
  than ``batch_size`` (one event each at least); with a single event the whole site is one
  batch. (The ``n // 2`` cap only matters for ``batch_size=2`` on an odd site: one batch of
  3 instead of a batch of 1.)
* **No events.** Such a site carries no Cox information. With ``cox_only=True`` (default)
  its patients are left out of the epoch (reason recorded). With ``cox_only=False`` (e.g.
  for the two-task loss, whose BCE term uses them) they are yielded in batches of at most
  ``batch_size`` (never of size 1); the trainer tells those batches apart with
  :meth:`SiteStratifiedBatchSampler.is_cox_batch` and calls the Cox loss with
  ``allow_no_events=True`` (or skips the Cox term) for them.
* **One patient.** A batch of one is never yielded and batches never mix sites, so a
  one-patient site is left out of every epoch (reason recorded, warning at construction).

Every other patient appears in exactly one batch per epoch. The order of batches is shuffled
across sites, and the assignment of patients to batches is re-drawn each epoch from
``(seed, epoch)`` (call :meth:`~SiteStratifiedBatchSampler.set_epoch`), so a given seed and
epoch always give the same batches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

__all__ = ["SitePlan", "SiteStratifiedBatchSampler"]


@dataclass(frozen=True)
class SitePlan:
    """How one site is batched in every epoch.

    Attributes:
        site: the site label as given.
        n_samples: patients of the site.
        n_events: events among them.
        n_batches: batches per epoch (0 if the site is left out).
        cox: whether its batches enter the Cox term (each holds >= 1 event).
        dropped_reason: why the site's patients are left out of every epoch, else ``None``.
    """

    site: Hashable
    n_samples: int
    n_events: int
    n_batches: int
    cox: bool
    dropped_reason: str | None = None


def _split_sizes(n: int, n_batches: int) -> list[int]:
    """Near-equal sizes summing to ``n`` (differ by at most 1, larger first)."""
    base, extra = divmod(n, n_batches)
    return [base + 1] * extra + [base] * (n_batches - extra)


class SiteStratifiedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices that never mix sites, never have size 1, and (for Cox
    batches) always hold an event. See the module docstring for the degenerate cases.

    Use as ``DataLoader(dataset, batch_sampler=sampler)`` and call ``sampler.set_epoch(e)``
    before each epoch.

    Args:
        sites: site label per sample, length ``n`` (any hashable values: str, int, ...).
        events: event indicator per sample, length ``n``, bool or 0/1.
        batch_size: target patients per batch, >= 2. Batches are at most this large unless
            a site has fewer events than ``ceil(n_site / batch_size)``.
        seed: base seed; the batches of an epoch depend only on ``(seed, epoch)``.
        cox_only: leave sites without events out of the epoch (default) or yield their
            batches as non-Cox batches.
        shuffle: shuffle patients and batch order each epoch; with ``False`` the batches
            are built from the samples in index order and emitted site by site.

    Raises:
        ValueError: if the lengths differ, ``events`` is not 0/1, ``batch_size < 2`` or
            ``sites`` is empty.
    """

    def __init__(
        self,
        sites: Sequence[Hashable] | np.ndarray,
        events: Sequence[int | bool] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        cox_only: bool = True,
        shuffle: bool = True,
    ) -> None:
        site_arr = np.asarray(sites, dtype=object).reshape(-1)
        ev = np.asarray(events).reshape(-1)
        if site_arr.size == 0:
            raise ValueError("sites must hold at least one sample")
        if ev.shape != site_arr.shape:
            raise ValueError(
                f"events has {ev.size} entries but sites has {site_arr.size}; they must match"
            )
        if ev.dtype != bool:
            if not np.all(np.isin(ev, (0, 1))):
                raise ValueError("events must hold only 0/1 (or booleans)")
            ev = ev.astype(bool)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a one-patient risk set), got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.cox_only = bool(cox_only)
        self.shuffle = bool(shuffle)
        self._epoch = 0
        self._events = ev

        # group sample indices by site, in order of first appearance
        index_of: dict[Hashable, int] = {}
        members: list[list[int]] = []
        for i, s in enumerate(site_arr.tolist()):
            k = index_of.setdefault(s, len(members))
            if k == len(members):
                members.append([])
            members[k].append(i)
        self._members = [np.asarray(m, dtype=np.int64) for m in members]
        self.plans: tuple[SitePlan, ...] = tuple(
            self._plan(site, idx) for site, idx in zip(index_of, self._members, strict=True)
        )
        dropped = [p for p in self.plans if p.dropped_reason is not None]
        if dropped:
            warnings.warn(
                "SiteStratifiedBatchSampler leaves out "
                + "; ".join(f"site {p.site!r} ({p.dropped_reason})" for p in dropped),
                stacklevel=2,
            )

    # ----------------------------------------------------------------------------------------

    def _plan(self, site: Hashable, idx: np.ndarray) -> SitePlan:
        n, e = int(idx.size), int(self._events[idx].sum())
        if n < 2:
            reason = "only 1 patient: batches never mix sites and never have size 1"
            return SitePlan(site, n, e, 0, False, reason)
        wanted = math.ceil(n / self.batch_size)
        if e == 0:
            if self.cox_only:
                return SitePlan(site, n, e, 0, False, "no events: no Cox information")
            return SitePlan(site, n, e, min(wanted, n // 2), False)
        return SitePlan(site, n, e, min(wanted, e, n // 2), True)

    @property
    def epoch(self) -> int:
        """The epoch whose batches :meth:`__iter__` yields."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (re-draws the batches; deterministic given ``seed``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch = int(epoch)

    @property
    def dropped_indices(self) -> np.ndarray:
        """Sample indices left out of every epoch (sorted); see :attr:`plans` for why."""
        pairs = zip(self.plans, self._members, strict=True)
        out = [m for p, m in pairs if p.dropped_reason is not None]
        return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)

    def is_cox_batch(self, batch: Sequence[int]) -> bool:
        """Whether ``batch`` (as yielded) enters the Cox term, i.e. holds >= 1 event."""
        return bool(self._events[np.asarray(batch, dtype=np.int64)].any())

    def __len__(self) -> int:
        """Batches per epoch (the same for every epoch)."""
        return sum(p.n_batches for p in self.plans)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self._epoch])
        batches: list[list[int]] = []
        for plan, idx in zip(self.plans, self._members, strict=True):
            if plan.n_batches == 0:
                continue
            batches.extend(self._site_batches(plan, idx, rng))
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[k] for k in order]
        yield from batches

    def _site_batches(
        self, plan: SitePlan, idx: np.ndarray, rng: np.random.Generator
    ) -> list[list[int]]:
        """Split one site's indices into ``plan.n_batches`` batches, one event seeded in each."""
        sizes = _split_sizes(plan.n_samples, plan.n_batches)
        is_ev = self._events[idx]
        ev_idx, cens_idx = idx[is_ev], idx[~is_ev]
        if self.shuffle:
            ev_idx, cens_idx = rng.permutation(ev_idx), rng.permutation(cens_idx)
        if plan.cox:
            # one event per batch first, then fill with the rest (events and censored mixed)
            seeds = ev_idx[: plan.n_batches]
            rest = np.concatenate([ev_idx[plan.n_batches :], cens_idx])
            if self.shuffle:
                rest = rng.permutation(rest)
            out, pos = [], 0
            for b, size in enumerate(sizes):
                take = rest[pos : pos + size - 1]
                pos += size - 1
                out.append([int(seeds[b]), *(int(i) for i in take)])
            return out
        out, pos = [], 0
        for size in sizes:
            out.append([int(i) for i in cens_idx[pos : pos + size]])
            pos += size
        return out
