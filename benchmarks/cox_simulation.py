"""Seed 000's simulation comparison (its Table 2 idea): oracle vs full-batched vs mini-batched.

A small MLP maps per-patient covariates to a log relative hazard ``g`` and is trained with
three losses on the same multi-site training cohort (data whose true hazard is known):

* **oracle** — the exponential full likelihood with the *known* per-site baseline rate
  (``exponential_oracle_nll``, seed 000 eqs. 8/9), on the mini-batches below;
* **full-batched** — the site-stratified Cox partial likelihood over the whole training
  cohort, one optimiser step per epoch (``cox_nll(..., strata=site)``, eq. 3);
* **mini-batched** — the Cox partial likelihood of each site-local batch from
  ``SiteStratifiedBatchSampler`` (eq. 5).

Reported per method (mean ± sd over seeds): its own final training loss, the common yardstick
(full site-stratified Cox NLL per event on the training cohort; the same quantity at the true
log rate a model of the covariates can know, eta + age term, is shown as "truth"), Harrell's C
(scikit-survival) on a held-out site next to the C of that true log rate, the epochs to
converge (first epoch whose yardstick is within ``--tol`` nats of that run's best) and wall
time.

Data. ``--cohort DIR`` reads a ``survfed make-cohort`` output (``DIR/_truth/<site>/truth.csv``
and the site baseline rates from ``DIR/_truth/cohort.json``). Without it (or with
``--synthetic-covariates``) the covariates are synthesised here with the generator's hazard
form (``survfed.common.synth.outcomes``)::

    eta  = cancer * (beta_c + beta_d (d_max - 15 mm) / 10 mm + beta_s (irregularity - 0.5))
    eps  = beta_age (age - 65) / 10 + N(0, sigma_eps^2)          (age is a model input)
    T    ~ Exponential(lambda_site * exp(eta + eps)) years
    C    = min(admin ~ U(follow_up - accrual, follow_up), loss ~ Exponential(loss_rate))

The MLP sees cancer, d_max, irregularity, age, the number of nodules and ``--noise-features``
pure-noise columns. Run: ``python benchmarks/cox_simulation.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sksurv.metrics import concordance_index_censored
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from survfed.common.survival.batching import SiteStratifiedBatchSampler
from survfed.common.survival.losses import cox_nll, exponential_oracle_nll

DAYS_PER_YEAR = 365.25
METHODS = ("oracle", "full-batched", "mini-batched")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HazardParams:
    """Coefficients of the documented hazard form (defaults = the generator's)."""

    beta_c: float = 2.6
    beta_d: float = 1.0
    beta_s: float = 1.0
    d_ref_mm: float = 15.0
    beta_age: float = 0.25
    sigma_eps: float = 0.5


# name: (baseline rate per year, follow-up days, accrual days, loss rate per year, cancer rate)
SYNTHETIC_SITES = {
    "iowa": (0.025, 2200.0, 700.0, 0.05, 0.45),
    "maastro": (0.040, 1800.0, 500.0, 0.08, 0.55),
    "stanford": (0.020, 2600.0, 900.0, 0.03, 0.40),
    "osaka": (0.035, 2000.0, 600.0, 0.06, 0.50),
    "heldout": (0.030, 2200.0, 700.0, 0.05, 0.50),
}


def synthesise(n_per_site: int, seed: int, params: HazardParams) -> pd.DataFrame:
    """One row per patient of every site in ``SYNTHETIC_SITES``.

    Columns: site, cancer (0/1), diameter_mm (0 without cancer), irregularity (0 without
    cancer), age, n_nodules, log_hazard (eta, known to the image), true_log_rate (the
    knowable part of the log rate: eta + the age term; the Gaussian frailty is unobservable),
    baseline_rate (per year), time_years, event (0/1).
    """
    rng = np.random.default_rng(seed)
    frames = []
    for site, (rate, follow_up, accrual, loss_rate, p_cancer) in SYNTHETIC_SITES.items():
        n = n_per_site
        cancer = rng.random(n) < p_cancer
        diameter = np.where(cancer, rng.uniform(6.0, 35.0, n), 0.0)
        irregular = np.where(cancer, rng.uniform(0.0, 1.0, n), 0.0)
        age = rng.normal(65.0, 8.0, n)
        n_nodules = rng.poisson(2.0, n) + cancer * rng.integers(1, 3, n)
        eta = cancer * (
            params.beta_c
            + params.beta_d * (diameter - params.d_ref_mm) / 10.0
            + params.beta_s * (irregular - 0.5)
        )
        age_term = params.beta_age * (age - 65.0) / 10.0
        eps = age_term + rng.normal(0.0, params.sigma_eps, n)
        t_event = rng.exponential(1.0 / (rate * np.exp(eta + eps)))
        admin = (follow_up - rng.uniform(0.0, accrual, n)) / DAYS_PER_YEAR
        loss = rng.exponential(1.0 / loss_rate, n)
        censor = np.minimum(admin, loss)
        days = np.maximum(1, np.ceil(np.minimum(t_event, censor) * DAYS_PER_YEAR))
        frames.append(
            pd.DataFrame(
                {
                    "site": site,
                    "cancer": cancer.astype(float),
                    "diameter_mm": diameter,
                    "irregularity": irregular,
                    "age": age,
                    "n_nodules": n_nodules.astype(float),
                    "log_hazard": eta,
                    "true_log_rate": eta + age_term,
                    "baseline_rate": rate,
                    "time_years": days / DAYS_PER_YEAR,
                    "event": (t_event <= censor).astype(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _pick(df: pd.DataFrame, names: tuple[str, ...], path: Path) -> pd.Series:
    for name in names:
        if name in df.columns:
            return df[name]
    raise SystemExit(f"{path}: none of the columns {names} found (columns: {list(df.columns)})")


def _n_nodules(df: pd.DataFrame, path: Path) -> np.ndarray:
    """Nodules per patient: ``n_nodules`` if present, else ``n_malignant + n_benign``."""
    if "n_nodules" in df.columns:
        return df["n_nodules"].to_numpy(float)
    malignant = _pick(df, ("n_malignant",), path).to_numpy(float)
    return malignant + _pick(df, ("n_benign",), path).to_numpy(float)


def _find_rate(node: object, site: str) -> float | None:
    """Search cohort.json for the site's baseline hazard per year (layout-tolerant)."""
    if isinstance(node, dict):
        entry = node.get(site)
        if isinstance(entry, dict):
            for key in ("baseline_hazard_per_year", "baseline_rate"):
                if key in entry:
                    return float(entry[key])
        if node.get("name") == site and "baseline_hazard_per_year" in node:
            return float(node["baseline_hazard_per_year"])
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_rate(child, site)
        if found is not None:
            return found
    return None


def load_cohort(root: Path) -> pd.DataFrame:
    """Read a ``make-cohort`` output's ``_truth`` into the columns of :func:`synthesise`."""
    truth = root / "_truth"
    csvs = sorted(truth.glob("*/truth.csv"))
    if not csvs:
        raise SystemExit(f"no {truth}/<site>/truth.csv found: is {root} a make-cohort output?")
    meta_path = truth / "cohort.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    frames = []
    for csv in csvs:
        site = csv.parent.name
        df = pd.read_csv(csv)
        if "baseline_hazard_per_year" in df.columns:
            rate = df["baseline_hazard_per_year"].to_numpy(float)
        else:
            found = _find_rate(meta, site)
            if found is None:
                raise SystemExit(f"{meta_path}: no baseline hazard for site {site!r}")
            rate = np.full(len(df), found)
        cancer = _pick(df, ("cancer",), csv).to_numpy(float)
        eta = _pick(df, ("log_hazard", "eta"), csv).to_numpy(float)
        days = _pick(df, ("time_days", "time"), csv).to_numpy(float)
        irregularity = _pick(df, ("irregularity",), csv).to_numpy(float)
        # the knowable log rate: eta + the age term of the frailty (its Gaussian part is noise)
        age_term = 0.0
        if "frailty" in df.columns and "noise" in df.columns:
            age_term = (df["frailty"] - df["noise"]).to_numpy(float)
        frames.append(
            pd.DataFrame(
                {
                    "site": site,
                    "cancer": cancer,
                    "diameter_mm": np.nan_to_num(
                        _pick(df, ("max_malignant_diameter_mm", "d_max_mm"), csv).to_numpy(float)
                    ),
                    "irregularity": np.nan_to_num(irregularity),
                    "age": _pick(df, ("age", "age_years"), csv).to_numpy(float),
                    "n_nodules": _n_nodules(df, csv),
                    "log_hazard": eta,
                    "true_log_rate": eta + age_term,
                    "baseline_rate": rate,
                    "time_years": days / DAYS_PER_YEAR,
                    "event": _pick(df, ("event",), csv).to_numpy(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (n, d) float32 standardised features
    event: torch.Tensor  # (n,) bool
    time: torch.Tensor  # (n,) float64 years
    site: torch.Tensor  # (n,) long
    rate: torch.Tensor  # (n,) float32 baseline rate per year
    eta: np.ndarray  # (n,) true image log-hazard
    true_log_rate: torch.Tensor  # (n,) eta + age term (the best a model of x can know)


FEATURES = ("cancer", "diameter_mm", "irregularity", "age", "n_nodules")


def make_splits(
    df: pd.DataFrame, heldout: str, n_noise: int, seed: int
) -> tuple[Split, Split, list[str]]:
    rng = np.random.default_rng(seed + 10_000)
    x = np.column_stack([df[list(FEATURES)].to_numpy(float), rng.normal(size=(len(df), n_noise))])
    test = (df["site"] == heldout).to_numpy()
    if not test.any() or test.all():
        raise SystemExit(f"held-out site {heldout!r} must be one of several sites")
    mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-8
    x = (x - mu) / sd
    train_sites = sorted(df.loc[~test, "site"].unique())
    site_id = df["site"].map({s: i for i, s in enumerate(train_sites)}).fillna(-1).astype(int)

    def split(sel: np.ndarray) -> Split:
        d = df[sel]
        return Split(
            x=torch.tensor(x[sel], dtype=torch.float32),
            event=torch.tensor(d["event"].to_numpy() == 1),
            time=torch.tensor(d["time_years"].to_numpy(float)),
            site=torch.tensor(site_id[sel].to_numpy()),
            rate=torch.tensor(d["baseline_rate"].to_numpy(float), dtype=torch.float32),
            eta=d["log_hazard"].to_numpy(float),
            true_log_rate=torch.tensor(d["true_log_rate"].to_numpy(float)),
        )

    return split(~test), split(test), train_sites


def _mlp(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 1))


def _harrell(event: torch.Tensor, time_: torch.Tensor, score: np.ndarray) -> float:
    return float(concordance_index_censored(event.numpy(), time_.numpy(), score)[0])


@dataclass
class RunResult:
    own_loss: float  # the method's own training loss, last epoch (mean over its steps)
    train_cox: float  # full stratified Cox NLL/event on the training sites, last epoch
    test_cox_best: float  # held-out Cox NLL/event at its best epoch
    best_epoch: int  # 1-based epoch of the held-out minimum (the early-stopping point)
    epochs_to_converge: int  # first epoch with held-out Cox NLL within tol of its minimum
    c_best: float  # held-out Harrell's C at the best epoch
    c_last: float  # held-out Harrell's C at the last epoch
    seconds: float  # training wall time (evaluation excluded)


def train_one(
    method: str, train: Split, test: Split, *, epochs: int, batch_size: int, lr: float,
    seed: int, tol: float,
) -> RunResult:  # fmt: skip
    """Train one MLP with ``method``; evaluate after every epoch."""
    torch.manual_seed(seed)
    model = _mlp(train.x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = SiteStratifiedBatchSampler(
        train.site.numpy(), train.event.numpy(), batch_size, seed=seed
    )
    test_cox: list[float] = []
    test_c: list[float] = []
    own = train_cox = math.nan
    seconds = 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        if method == "full-batched":
            batches = [torch.arange(len(train.event))]
        else:
            sampler.set_epoch(epoch)
            batches = [torch.tensor(b) for b in sampler]
        losses = []
        for idx in batches:
            g = model(train.x[idx])[:, 0]
            if method == "oracle":
                loss = exponential_oracle_nll(g, train.event[idx], train.time[idx], train.rate[idx])
            else:
                loss = cox_nll(g, train.event[idx], train.time[idx], strata=train.site[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        seconds += time.perf_counter() - start
        own = float(np.mean(losses))
        model.eval()
        with torch.no_grad():
            g_train = model(train.x)[:, 0]
            train_cox = float(cox_nll(g_train, train.event, train.time, strata=train.site))
            g_test = model(test.x)[:, 0]
            test_cox.append(float(cox_nll(g_test, test.event, test.time)))
        test_c.append(_harrell(test.event, test.time, g_test.numpy().astype(float)))
    best = int(np.argmin(test_cox))
    converged = next(e for e, v in enumerate(test_cox) if v <= test_cox[best] + tol)
    return RunResult(
        own_loss=own,
        train_cox=train_cox,
        test_cox_best=test_cox[best],
        best_epoch=best + 1,
        epochs_to_converge=converged + 1,
        c_best=test_c[best],
        c_last=test_c[-1],
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def _ms(values: list[float], digits: int = 4) -> str:
    arr = np.asarray(values, dtype=float)
    if len(arr) == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, help="a survfed make-cohort output folder")
    parser.add_argument(
        "--synthetic-covariates",
        action="store_true",
        help="synthesise covariates with the documented hazard form (default without --cohort)",
    )
    parser.add_argument("--patients-per-site", type=int, default=600)
    parser.add_argument(
        "--sigma-eps",
        type=float,
        default=0.0,
        help="sd of the unobservable Gaussian frailty in synthetic data (generator: 0.5; "
        "default 0 as in seed 000's simulation, so the true log rate is learnable)",
    )
    parser.add_argument("--heldout", default=None, help="held-out site (default: the last one)")
    parser.add_argument("--noise-features", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3, help="repetitions (data and init)")
    parser.add_argument("--tol", type=float, default=0.01, help="convergence tolerance, nats")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="SiteStratifiedBatchSampler leaves out")

    use_cohort = args.cohort is not None and not args.synthetic_covariates
    results: dict[str, list[RunResult]] = {m: [] for m in METHODS}
    truth_yard, truth_c, truth_oracle, truth_test_cox = [], [], [], []
    describe = ""
    for rep in range(args.seeds):
        seed = 1000 + rep
        if use_cohort:
            df = load_cohort(args.cohort)
        else:
            params = HazardParams(sigma_eps=args.sigma_eps)
            df = synthesise(args.patients_per_site, seed, params)
        heldout = args.heldout or str(df["site"].iloc[-1])
        train, test, train_sites = make_splits(df, heldout, args.noise_features, seed)
        truth_yard.append(
            float(cox_nll(train.true_log_rate, train.event, train.time, strata=train.site))
        )
        truth_oracle.append(
            float(exponential_oracle_nll(train.true_log_rate, train.event, train.time, train.rate))
        )
        truth_test_cox.append(float(cox_nll(test.true_log_rate, test.event, test.time)))
        truth_c.append(_harrell(test.event, test.time, test.true_log_rate.numpy()))
        if rep == 0:
            describe = (
                f"data: {'make-cohort ' + str(args.cohort) if use_cohort else 'synthetic'}; "
                f"train sites {train_sites} ({len(train.event)} patients, "
                f"{int(train.event.sum())} events); held-out {heldout!r} "
                f"({len(test.event)} patients, {int(test.event.sum())} events); "
                f"{len(FEATURES)} covariates + {args.noise_features} noise; MLP 32; Adam "
                f"lr={args.lr}; {args.epochs} epochs; batch {args.batch_size}; "
                f"{args.seeds} seed(s); torch threads {args.threads}"
                + ("" if use_cohort else f"; sigma_eps {args.sigma_eps}")
            )
        for method in METHODS:
            results[method].append(
                train_one(
                    method,
                    train,
                    test,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=seed,
                    tol=args.tol,
                )
            )

    print(f"\n{describe}\n")
    print(
        "| loss | final own train loss | train Cox NLL/event | held-out Cox NLL/event, best | "
        "best epoch | epochs to within tol of best | held-out C at best | held-out C, last | "
        "train s |"
    )
    print("|" + " --- |" * 9)
    print(
        f"| truth (eta + age term) | oracle: {_ms(truth_oracle)} | {_ms(truth_yard)} | "
        f"{_ms(truth_test_cox)} | | | {_ms(truth_c)} | {_ms(truth_c)} | |"
    )
    for method in METHODS:
        rs = results[method]
        cells = [
            _ms([r.own_loss for r in rs]),
            _ms([r.train_cox for r in rs]),
            _ms([r.test_cox_best for r in rs]),
            _ms([r.best_epoch for r in rs], 1),
            _ms([r.epochs_to_converge for r in rs], 1),
            _ms([r.c_best for r in rs]),
            _ms([r.c_last for r in rs]),
            _ms([r.seconds for r in rs], 1),
        ]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(
        f"\nConvergence = first epoch whose held-out Cox NLL/event is within {args.tol} nats of "
        "its minimum; Cox NLLs use site-stratified risk sets (the held-out site is one stratum)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
