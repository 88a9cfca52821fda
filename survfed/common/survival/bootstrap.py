"""Patient-level bootstrap confidence intervals for any cohort metric.

Resample patients with replacement (all arrays with the same indices, so a patient keeps its
prediction and outcome), recompute the metric on the whole resample, and take the percentile
interval of the values. Resamples where the metric is undefined (it returns ``None`` or NaN,
e.g. no events, or one cancer class) are skipped and counted, so a report can say on how many
resamples an interval rests. Metrics that *raise* are not caught: that is a bug, not an
undefined value.

Resample ``r`` uses the ``r``-th draw of ``numpy.random.default_rng(seed)``, so metrics
bootstrapped with the same seed over the same patients use the same resamples (paired).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

__all__ = ["BootstrapCI", "bootstrap_ci", "bootstrap_ci_many", "bootstrap_indices"]

K = TypeVar("K", bound=Hashable)

#: Default number of bootstrap resamples.
DEFAULT_RESAMPLES = 200


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with its percentile bootstrap interval.

    Attributes:
        estimate: the metric on the full cohort, ``None`` if undefined there.
        low, high: interval bounds, ``None`` when fewer than 2 resamples were usable.
        n_used: resamples on which the metric was defined.
        n_resamples: resamples drawn.
        level: coverage of the interval, e.g. 0.95.
    """

    estimate: float | None
    low: float | None
    high: float | None
    n_used: int
    n_resamples: int
    level: float

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(low, high)`` or ``None``."""
        if self.low is None or self.high is None:
            return None
        return (self.low, self.high)

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form."""
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "n_used": self.n_used,
            "n_resamples": self.n_resamples,
            "level": self.level,
        }


def _check(n_resamples: int, level: float, seed: int) -> None:
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 0:
        raise ValueError(f"n_resamples must be a non-negative integer, got {n_resamples!r}")
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def _check_arrays(arrays: tuple[object, ...]) -> tuple[list[np.ndarray], int]:
    if not arrays:
        raise ValueError("arrays: give at least one per-patient array to resample")
    out = [np.asarray(a) for a in arrays]
    n = out[0].shape[0] if out[0].ndim else -1
    for i, a in enumerate(out):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"arrays[{i}] must have one row per patient ({n}), got shape {a.shape}"
            )
    if n == 0:
        raise ValueError("arrays must not be empty")
    return out, n


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield ``n_resamples`` index arrays of shape ``(n,)`` drawn with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n, size=n)


def _value(x: object) -> float | None:
    if x is None:
        return None
    v = float(x)  # type: ignore[arg-type]
    return v if math.isfinite(v) else None


def _interval(
    estimate: float | None, values: list[float], n_resamples: int, level: float
) -> BootstrapCI:
    if len(values) < 2:
        return BootstrapCI(estimate, None, None, len(values), n_resamples, float(level))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return BootstrapCI(estimate, float(low), float(high), len(values), n_resamples, float(level))


def bootstrap_ci(
    metric: Callable[..., float | None],
    *arrays: object,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile bootstrap interval of a scalar metric.

    Args:
        metric: ``metric(*arrays) -> float | None``; ``None``/NaN = undefined.
        *arrays: per-patient arrays, first axis = patients (e.g. ``log_hz, time, event``).
        n_resamples: resamples to draw (default 200).
        seed: seed of the resampling.
        level: interval coverage (default 0.95).

    Returns:
        :class:`BootstrapCI` with the full-cohort estimate and the interval.
    """
    _check(n_resamples, level, seed)
    data, n = _check_arrays(arrays)
    estimate = _value(metric(*data))
    values: list[float] = []
    for idx in bootstrap_indices(n, n_resamples, seed):
        v = _value(metric(*(a[idx] for a in data)))
        if v is not None:
            values.append(v)
    return _interval(estimate, values, n_resamples, level)


def bootstrap_ci_many(
    metric: Callable[..., Mapping[K, float | None]],
    *arrays: object,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[K, BootstrapCI]:
    """Percentile bootstrap intervals of a metric with several named values.

    Useful when the values share work, e.g. the time-dependent AUC at several horizons.
    The keys of the full-cohort result define the components; a key missing from a
    resample's result counts as undefined on that resample.

    Args:
        metric: ``metric(*arrays) -> {key: float | None}``.
        *arrays, n_resamples, seed, level: as in :func:`bootstrap_ci`.

    Returns:
        ``{key: BootstrapCI}`` for every key of the full-cohort result.
    """
    _check(n_resamples, level, seed)
    data, n = _check_arrays(arrays)
    full = metric(*data)
    if not isinstance(full, Mapping):
        raise TypeError(f"metric must return a mapping, got {type(full).__name__}")
    values: dict[K, list[float]] = {k: [] for k in full}
    for idx in bootstrap_indices(n, n_resamples, seed):
        res = metric(*(a[idx] for a in data))
        for k, vals in values.items():
            v = _value(res.get(k))
            if v is not None:
                vals.append(v)
    return {k: _interval(_value(full[k]), values[k], n_resamples, level) for k in full}
