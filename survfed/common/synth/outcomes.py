"""Survival outcomes with a known hazard, in the spirit of seed 000's Nodule-CIFAR simulation.

The model (every symbol is recorded per patient in ``_truth/<site>/truth.csv``):

* ``cancer ~ Bernoulli(p_site)``. Cancer patients carry 1-2 malignant nodules; everybody carries
  0-4 benign ones (see :mod:`survfed.common.synth.nodules`).
* Image-determined log-hazard (what the best possible image model can know)::

      eta = beta_0                                                      (no cancer)
      eta = beta_0 + beta_c + beta_d * (d_max - d_ref) / 10 mm
                            + beta_s * (s - 0.5)                        (cancer)

  with ``d_max`` the equivalent-sphere diameter (mm) of the largest malignant nodule and ``s``
  in [0, 1] the irregularity (lobulation + spiculation amplitude) of that nodule.
* Unobserved frailty ``eps = beta_age * (age - 65) / 10 + N(0, sigma_eps^2)``: age is written
  to ``clinical.csv`` (a clinical covariate with a known effect), the Gaussian part is noise.
* Event time ``T ~ Exponential(rate = lambda_site * exp(eta + eps))`` per year, ``lambda_site``
  the site's baseline hazard.
* Censoring: administrative at the end of the site's study (entry uniform over the accrual
  period, so admin censoring time ``C_a ~ U(follow_up - accrual, follow_up)``), and random loss
  to follow-up ``C_l ~ Exponential(loss_rate_site)``; ``C = min(C_a, C_l)``.
* Observed time ``time_days = max(1, ceil(365.25 * min(T, C)))``, ``event = T <= C``.

The oracle C-index is Harrell's C of ``eta`` against (time_days, event).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["OutcomeParams", "PatientOutcome", "draw_outcome", "oracle_c_index"]

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class OutcomeParams:
    """Coefficients of the hazard model (see the module docstring)."""

    beta_0: float = 0.0
    beta_c: float = 2.6
    beta_d: float = 1.0
    beta_s: float = 1.0
    d_ref_mm: float = 15.0
    beta_age: float = 0.25
    sigma_eps: float = 0.9

    def as_dict(self) -> dict[str, float]:
        """The coefficients by name."""
        return asdict(self)


@dataclass(frozen=True)
class PatientOutcome:
    """One patient's drawn outcome; times in days unless said otherwise."""

    log_hazard: float  # eta, image-determined
    frailty: float  # eps = age term + Gaussian noise
    noise: float  # the Gaussian part of eps
    event_time_days: float  # T (continuous)
    censor_time_days: float  # C = min(admin, loss)
    admin_censor_days: float
    loss_censor_days: float
    time_days: int  # observed, integer >= 1
    event: int  # 0/1


def log_hazard(cancer: bool, d_max_mm: float, irregularity: float, params: OutcomeParams) -> float:
    """Image-determined log-hazard ``eta`` (dimensionless).

    Args:
        cancer: whether the patient has cancer (malignant nodules).
        d_max_mm: equivalent-sphere diameter of the largest malignant nodule, mm (ignored
            without cancer).
        irregularity: irregularity in [0, 1] of that nodule (ignored without cancer).
        params: coefficients.
    """
    if not cancer:
        return float(params.beta_0)
    if not (d_max_mm > 0 and 0.0 <= irregularity <= 1.0):
        raise ValueError(
            f"cancer patients need d_max_mm > 0 and irregularity in [0, 1], got "
            f"d_max_mm={d_max_mm}, irregularity={irregularity}"
        )
    return float(
        params.beta_0
        + params.beta_c
        + params.beta_d * (d_max_mm - params.d_ref_mm) / 10.0
        + params.beta_s * (irregularity - 0.5)
    )


def draw_outcome(
    rng: np.random.Generator,
    *,
    cancer: bool,
    d_max_mm: float,
    irregularity: float,
    age_years: float,
    baseline_hazard_per_year: float,
    follow_up_days: float,
    accrual_days: float,
    loss_rate_per_year: float,
    params: OutcomeParams,
) -> PatientOutcome:
    """Draw event and censoring times for one patient (see the module docstring).

    Args:
        rng: the patient's outcome random stream.
        cancer, d_max_mm, irregularity: image truth (see :func:`log_hazard`).
        age_years: age at the scan, years.
        baseline_hazard_per_year: ``lambda_site`` (> 0), events per year at ``eta + eps = 0``.
        follow_up_days: end of study counted from the first enrolment, days (> accrual).
        accrual_days: length of the enrolment period, days (>= 0).
        loss_rate_per_year: rate of random loss to follow-up, per year (>= 0).
        params: hazard coefficients.
    """
    if not baseline_hazard_per_year > 0:
        raise ValueError(f"baseline_hazard_per_year must be > 0, got {baseline_hazard_per_year}")
    if not (0 <= accrual_days < follow_up_days):
        raise ValueError(
            f"need 0 <= accrual_days < follow_up_days, got {accrual_days}, {follow_up_days}"
        )
    if loss_rate_per_year < 0:
        raise ValueError(f"loss_rate_per_year must be >= 0, got {loss_rate_per_year}")
    eta = log_hazard(cancer, d_max_mm, irregularity, params)
    noise = float(rng.normal(0.0, params.sigma_eps))
    frailty = params.beta_age * (age_years - 65.0) / 10.0 + noise
    rate = baseline_hazard_per_year * math.exp(eta + frailty)
    event_time = float(rng.exponential(1.0 / rate)) * DAYS_PER_YEAR
    admin = float(follow_up_days - rng.uniform(0.0, accrual_days))
    loss = (
        float(rng.exponential(1.0 / loss_rate_per_year)) * DAYS_PER_YEAR
        if loss_rate_per_year > 0
        else math.inf
    )
    censor = min(admin, loss)
    observed = min(event_time, censor)
    return PatientOutcome(
        log_hazard=eta,
        frailty=float(frailty),
        noise=noise,
        event_time_days=event_time,
        censor_time_days=censor,
        admin_censor_days=admin,
        loss_censor_days=loss,
        time_days=max(1, math.ceil(observed)),
        event=int(event_time <= censor),
    )


def oracle_c_index(time_days: np.ndarray, event: np.ndarray, log_hazards: np.ndarray) -> float:
    """Harrell's C of the true log-hazards, NaN without comparable pairs.

    The concordance is :func:`survfed.common.survival.metrics.harrell_c` (scikit-survival's
    definition, checked against it in the tests), so writing a cohort needs no scikit-survival.

    Args:
        time_days: ``(n,)`` observed times.
        event: ``(n,)`` 0/1 event indicators.
        log_hazards: ``(n,)`` risk scores (higher = earlier event).
    """
    from survfed.common.survival.metrics import harrell_c

    c = harrell_c(log_hazards, time_days, event)  # checks the arrays, naming the bad one
    return float("nan") if c is None else c
