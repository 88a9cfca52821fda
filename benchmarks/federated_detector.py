"""Issue 6's comparison: federated vs pooled detector, and survival on detector proposals vs on
annotations, on a held-out site of a fresh ``make-cohort`` cohort.

Runs, with the survfed apps on Flower's simulation engine (``survfed simulate``; the same
ServerApp and ClientApp as a real federation):

1. federated detector rounds, then federated survival rounds on the crops the final detector
   proposes (every patient, annotated or not);
2. federated survival rounds on annotation crops, with the same survival model: same encoder,
   grid and crop size, and with an N-Net encoder the same start, the final federated detector's
   backbone (``detector-init``; no detector rounds), so the two arms differ only in where the
   crops are cut;
3. the pooled detector on the same scans (``survfed train-detector``, rounds x local epochs);

and prints a markdown table: detection metrics on the held-out site (nodules >= 6 mm: CPM,
top-5 recall, each detector with and without test-time mirroring; and the federated/pooled CPM
ratio), and the held-out C-index of both survival
models with the oracle's and the share of the annotation model's gap to 0.5 the proposal model
closes.

Usage::

    python benchmarks/federated_detector.py --seed 41 --sites iowa:40,maastro:50,stanford:30 \\
        --heldout 60 --detector-rounds 10 --detector-epochs 3 --out /tmp/fd

or, on sharp 512 x 512 scans (about 9 GB of DICOM files, two to three hours on 2 cores)::

    python benchmarks/federated_detector.py --seed 53 --preset standard \\
        --sites iowa:30,maastro:40,stanford:30 --heldout 40 --detector-spacing-mm 2 --out /tmp/fs

Heavy on CPUs (about an hour on 2 cores with the defaults; the standard preset's 30 detector
rounds alone take about 45 minutes, its 90-epoch pooled detector about 30); every step reuses
what an earlier run of the same ``--out`` left (cohort, preprocessing caches, and each finished
run whose settings are unchanged; a run folder with other settings is replaced).

Each run writes its numbers to ``results.json`` in its folder. With ``--train-seed`` the same
cohort is trained again into ``OUT/train-seed-N``; once two or more training seeds have
finished, a last table gives each one's numbers with their mean and range, then the mean
federated CPM over the mean pooled CPM; ``--summarize`` prints them again without training
anything::

    python benchmarks/federated_detector.py --seed 53 ... --train-seed 54 --out /tmp/fs
    python benchmarks/federated_detector.py --out /tmp/fs --summarize
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _simulate(cohort: Path, out: Path, sets: dict[str, object]) -> dict:
    """``survfed simulate`` into ``out`` with run-config ``sets``; a finished run there with
    the same settings is reused, any other run folder there is replaced."""
    summary = out / "summary.json"
    if summary.is_file():
        try:
            saved = json.loads((out / "config.json").read_text())["federation"]
        except (OSError, ValueError, KeyError):
            saved = {}
        if all(saved.get(k) == json.loads(json.dumps(v)) for k, v in sets.items()):
            print(f"reusing the finished run {out} (same settings)")
            return {**json.loads(summary.read_text()), "reused": True}
    if out.exists():
        print(f"replacing {out}: its run is unfinished or had other settings")
        shutil.rmtree(out)
    cmd = [
        sys.executable, "-m", "survfed.cli", "simulate", "--cohort", str(cohort),
        "--heldout", "heldout", "--out", str(out), "--json",
    ]  # fmt: skip
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:  # Ctrl-C or SIGTERM: let the simulation stop its own processes
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"survfed simulate failed:\n{stderr[-4000:]}")
    return json.loads(stdout)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(interval: list[float] | None) -> str:
    return f"[{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else ""


def _reusable(run: Path, settings: dict) -> bool:
    """A finished pooled detector run with exactly these settings."""
    try:
        saved = json.loads((run / "config.json").read_text())["detector"]
        done = saved == json.loads(json.dumps(settings))  # tuples as JSON lists
    except (OSError, ValueError, KeyError):
        return False
    return done and (run / "detector.pt").is_file()


def _scores(evaluation: dict) -> dict:
    return {k: evaluation[k] for k in ("cpm", "recall_top_k", "n_nodules")}


def _results(out: Path) -> list[dict]:
    """The ``results.json`` of every training seed run into ``out``, by training seed."""
    found = [out / "results.json", *out.glob("train-seed-*/results.json")]
    results = [json.loads(path.read_text()) for path in found if path.is_file()]
    return sorted(results, key=lambda r: r["train_seed"])


def _ratio(numerator: float | None, denominator: float | None) -> float:
    """``numerator / denominator``; nan where either is undefined (None) or the denominator 0."""
    if numerator is None or not denominator:
        return float("nan")
    return numerator / denominator


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)  # None: undefined in the JSON


def spread_table(results: list[dict]) -> str:
    """Markdown: one row per training seed (detector CPM and top-5 recall mirrored and plain,
    federated/pooled CPM, the survival gap share), then their mean and min–max over the seeds
    where a value is defined (a ratio with a zero denominator is nan and left out), and the
    mean federated CPM over the mean pooled CPM."""
    columns = {
        "fed CPM mirrored": lambda r: r["federated"]["mirrored"]["cpm"],
        "fed top-5 mirrored": lambda r: r["federated"]["mirrored"]["recall_top_k"],
        "pooled CPM mirrored": lambda r: r["pooled"]["mirrored"]["cpm"],
        "fed/pooled mirrored": lambda r: _ratio(
            r["federated"]["mirrored"]["cpm"], r["pooled"]["mirrored"]["cpm"]
        ),
        "fed CPM plain": lambda r: r["federated"]["plain"]["cpm"],
        "pooled CPM plain": lambda r: r["pooled"]["plain"]["cpm"],
        "fed/pooled plain": lambda r: _ratio(
            r["federated"]["plain"]["cpm"], r["pooled"]["plain"]["cpm"]
        ),
        "survival gap share": lambda r: r["survival"]["gap_share"],
    }
    values = {name: [_num(get(r)) for r in results] for name, get in columns.items()}
    lines = [
        "| training seed | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for i, r in enumerate(results):
        lines.append(f"| {r['train_seed']} | " + " | ".join(
            _cell(values[name][i]) for name in columns) + " |")  # fmt: skip
    finite = {k: [x for x in v if math.isfinite(x)] for k, v in values.items()}  # nan: undefined
    means = {name: sum(v) / len(v) if v else None for name, v in finite.items()}
    lines.append("| mean | " + " | ".join(
        "n/a" if m is None else f"{m:.3f}" for m in means.values()) + " |")  # fmt: skip
    lines.append("| min–max | " + " | ".join(
        f"{min(v):.3f}–{max(v):.3f}" if v else "n/a" for v in finite.values()) + " |")  # fmt: skip
    ratios = [
        f"{s} {_ratio(means[f'fed CPM {s}'], means[f'pooled CPM {s}']):.3f}"
        for s in ("mirrored", "plain")
    ]
    lines.append(
        "\nmean federated CPM / mean pooled CPM (both arms vary with training noise): "
        + ", ".join(ratios)
    )
    return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "—"  # not run, or undefined


def _print_spread(results: list[dict]) -> None:
    print(f"\n### cohort seed {results[0]['seed']}: {len(results)} training seeds\n")
    print(spread_table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/survfed-fd"))
    parser.add_argument("--seed", type=int, default=41, help="the cohort's seed")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="seeds training (both detectors' first weights, patches and batches, the survival "
        "runs); default: --seed. Another value trains on the same cohort into "
        "OUT/train-seed-N, to measure how much the results move with training noise alone",
    )
    parser.add_argument("--sites", default="iowa:40,maastro:50,stanford:30")
    parser.add_argument("--heldout", type=int, default=60)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument(
        "--detector-rounds",
        type=int,
        default=None,
        help="federated detector rounds (default: 30 on the standard preset, where 30 x 3 "
        "reached CPM 0.90 on seed 67 and 10 x 3 only 0.70; 10 on tiny); the pooled detector "
        "trains rounds x --detector-epochs epochs",
    )
    parser.add_argument("--detector-epochs", type=int, default=3)
    parser.add_argument("--detector-lr", type=float, default=2e-3, help="both detectors' AdamW lr")
    parser.add_argument(
        "--detector-average-last",
        type=float,
        default=None,
        help="both detectors' tail average: the mean of the last share of the rounds (epochs) "
        "(default: survfed's, 0.1; 0 = the last round's model)",
    )
    parser.add_argument(
        "--detector-spacing-mm",
        type=float,
        default=None,
        help="the detector's grid (default: the CPU preset's 2.5 mm; 2 on the standard preset)",
    )
    parser.add_argument(
        "--mirror-tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the federation's detector inference (held-out scoring, the sites' survival "
        "proposals) with test-time mirroring; both detectors are also scored the other way",
    )
    parser.add_argument(
        "--proposal-encoder",
        default="nnet-small",
        help="survival encoder on proposal crops (nnet-small: the detector's backbone on its grid)",
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="print the table over the training seeds already run into OUT (their mean and "
        "range) and exit, training nothing",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        results = _results(args.out.resolve())
        if len(results) < 2:
            print(f"{args.out} holds the results of {len(results)} training seed(s); need 2")
        else:
            _print_spread(results)
        return 0

    from survfed.common.config import DetectorTrainConfig
    from survfed.common.detection.config import cpu_preset
    from survfed.common.synth.cohort import make_cohort, parse_sites
    from survfed.server.detector_eval import size_label
    from survfed.server.evaluate import evaluate_detector_run
    from survfed.server.federation import install_stop_signals
    from survfed.server.pooled_detector import train_pooled_detector

    install_stop_signals()  # SIGTERM (timeout, a batch scheduler) stops the runs it started

    if args.detector_average_last is None:
        args.detector_average_last = DetectorTrainConfig.average_last
    if args.train_seed is None:
        args.train_seed = args.seed
    if args.detector_rounds is None:
        args.detector_rounds = 30 if args.preset == "standard" else 10
    spacing = args.detector_spacing_mm or cpu_preset().spacing_mm
    out = args.out.resolve()
    cohort = out / "cohort"
    heldout_cache = out / ".fed-detector-cache"  # held-out scans on the detector's grid
    runs = out if args.train_seed == args.seed else out / f"train-seed-{args.train_seed}"
    fed_run, pooled_run = runs / "fed-detector", runs / "pooled-detector"
    sites = dict(parse_sites(args.sites))
    if not (cohort / "_truth" / "cohort.json").is_file():
        make_cohort(cohort, {**sites, "heldout": args.heldout}, seed=args.seed,
                    preset=args.preset, progress=True)  # fmt: skip
    common = {
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "seed": args.train_seed,
        "bootstrap-per-round": 0,
        "bootstrap-final": 200,
        "min-patients-for-metrics": 3,
        # the simulation preprocesses each site inside its first round, and 2 cores run the
        # sites one after the other: 512 x 512 scans take longer than the default 600 s
        "round-timeout-s": 3600.0 if args.preset == "standard" else 600.0,
    }
    nnet_crops = args.proposal_encoder.startswith("nnet")  # crops on the detector's grid
    survival_model = {  # the same in both survival arms
        "encoder": args.proposal_encoder,
        "spacing-mm": spacing if nnet_crops else 1.0,
        "crop-size": 32,
    }
    detector = {"detector-preset": "cpu", "detector-spacing-mm": spacing}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with_detector = _simulate(
        cohort,
        fed_run,
        {
            **common,
            **survival_model,
            **detector,
            "detector-rounds": args.detector_rounds,
            "detector-local-epochs": args.detector_epochs,
            "detector-eval-every": args.detector_rounds,
            "detector-lr": args.detector_lr,
            "detector-average-last": args.detector_average_last,
            "detector-mirror-tta": args.mirror_tta,
            "eval-cache-dir": str(heldout_cache),
        },
    )
    timings["federated detector + proposal survival"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    annotation_sets: dict[str, object] = {**common, **survival_model, "crop-source": "annotations"}
    if nnet_crops:  # the same start as the proposal arm: the federated detector's backbone
        annotation_sets |= {
            **detector,
            "detector-init": str(fed_run),
            "detector-mirror-tta": False,  # its proposals are not used here
            # the held-out scans the first run preprocessed on the detector's grid
            "eval-cache-dir": str(heldout_cache),
        }
    annotations = _simulate(cohort, runs / "fed-annotations", annotation_sets)
    timings["federated annotation survival"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the pooled arm reads the scans the federation preprocessed (same layout and settings:
    # the sites' caches next to their folders, the coordinator's held-out cache), so no scan
    # is preprocessed twice; other settings get a folder of their own there
    site_caches = cohort / ".survfed-cache"
    config = DetectorTrainConfig(
        epochs=args.detector_rounds * args.detector_epochs,
        lr=args.detector_lr,
        average_last=args.detector_average_last,
        seed=args.train_seed,
        detector=cpu_preset(spacing_mm=spacing),
    )
    pooled_reused = _reusable(pooled_run, config.to_dict())
    if pooled_reused:
        print(f"reusing the pooled detector in {pooled_run} (same settings)")
    else:
        train_pooled_detector(
            [cohort / s for s in sites], pooled_run, config,
            cache_dir=site_caches, progress=False, overwrite=True,
        )  # fmt: skip
    pooled, pooled_other = (
        evaluate_detector_run(
            pooled_run, cohort / "heldout", cache_dir=heldout_cache,
            progress=False, mirror_tta=tta,
        ).evaluation.to_dict()
        for tta in (args.mirror_tta, not args.mirror_tta)
    )  # fmt: skip
    timings["pooled detector" + (" (reused; its scoring)" if pooled_reused else "")] = (
        time.perf_counter() - t0
    )
    fed_other = evaluate_detector_run(
        fed_run, cohort / "heldout", cache_dir=heldout_cache,
        progress=False, mirror_tta=not args.mirror_tta,
    ).evaluation.to_dict()  # fmt: skip

    fed = with_detector["detector"]["evaluations"]["heldout"]
    surv_det = with_detector["evaluations"]["heldout"]
    surv_ann = annotations["evaluations"]["heldout"]
    gap_det, gap_ann = surv_det["c_index"] - 0.5, surv_ann["c_index"] - 0.5
    trained = "" if args.train_seed == args.seed else f" (training seed {args.train_seed})"
    print(f"\n### seed {args.seed}{trained}, {args.preset} preset, sites {args.sites}, held-out "
          f"{args.heldout}, detector grid {spacing:g} mm, detector tail average "
          f"{args.detector_average_last:g}\n")  # fmt: skip
    print("| detector (held-out, nodules >= 6 mm) | mirror TTA | CPM | top-5 recall | nodules |")
    print("|---|---|---:|---:|---:|")
    rows = (("federated", fed, args.mirror_tta), ("pooled", pooled, args.mirror_tta),
            ("federated", fed_other, not args.mirror_tta),
            ("pooled", pooled_other, not args.mirror_tta))  # fmt: skip
    for name, d, tta in rows:
        print(f"| {name} | {'yes' if tta else 'no'} | {d['cpm']:.3f} | {d['recall_top_k']:.3f} "
              f"| {d['n_nodules']} |")  # fmt: skip
    print(f"\n| top-5 hits by diameter (mm), mirror TTA {'on' if args.mirror_tta else 'off'} "
          "| federated | pooled |\n|---|---:|---:|")  # fmt: skip
    for f, p in zip(fed.get("by_size_mm", []), pooled.get("by_size_mm", []), strict=False):
        label = size_label(f["low"], f["high"])
        print(f"| {label} | {f['top_k']}/{f['n']} | {p['top_k']}/{p['n']} |")
    ratio = _ratio(fed["cpm"], pooled["cpm"])
    print(f"\nfederated CPM / pooled CPM: {ratio:.2f}\n")
    print("| federated survival model | held-out C-index [95% CI] | n | oracle on those |")
    print("|---|---:|---:|---:|")
    for name, ev in (("crops at the detector's proposals", surv_det),
                     ("crops at the annotations", surv_ann)):  # fmt: skip
        print(f"| {name} | {ev['c_index']:.3f} {_ci(ev.get('c_index_ci'))} | {ev['n']} "
              f"| {_fmt(ev.get('oracle_c_index'))} |")  # fmt: skip
    share = gap_det / gap_ann if gap_ann > 0 else float("nan")
    print(f"\nproposal model's gap to 0.5 / annotation model's: {share:.2f}")
    start = ", both started from the federated detector's backbone" if nnet_crops else ""
    print(
        f"(both models: encoder {args.proposal_encoder}, {survival_model['crop-size']}-voxel "
        f"crops on a {survival_model['spacing-mm']:g} mm grid{start})\n"
    )
    reused = {
        "federated detector + proposal survival": "reused" in with_detector,
        "federated annotation survival": "reused" in annotations,
    }
    for name, seconds in timings.items():
        print(f"- {name}: " + ("reused" if reused.get(name) else f"{seconds:.0f} s"))
    # fed and pooled were scored as the federation's setting says, the *_other ones the other way
    this, other = ("mirrored", "plain") if args.mirror_tta else ("plain", "mirrored")
    results = {
        "seed": args.seed,
        "train_seed": args.train_seed,
        "federated": {this: _scores(fed), other: _scores(fed_other)},
        "pooled": {this: _scores(pooled), other: _scores(pooled_other)},
        "survival": {
            "proposals": {k: surv_det[k] for k in ("c_index", "n")},
            "annotations": {k: surv_ann[k] for k in ("c_index", "n")},
            "gap_share": share,
        },
    }
    (runs / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if len(all_results := _results(out)) >= 2:
        _print_spread(all_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
