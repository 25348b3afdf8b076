"""Calibrated uncertainties on a shared benchmark set: coverage before and after.

    python benchmarks/bench_calibration.py --data ../shared/data/cu_emt [--no-2b]

Holds out a random ``--holdout`` fraction (default 15 %, seed ``--seed``) of the
training configurations (never the isolated atom, never the test set), fits
bench_fit.py's recipe on the rest, calibrates the stds on the held-out part
(``gapfit.calibration``) and prints, on the held-out and on the test set, the coverage
of the 68 % and 95 % intervals, the NLL and the Spearman correlation of the DTC and the
calibrated stds. ``--cv K`` calibrates on K-fold cross-validation of the fit part
instead (``gapfit.crossval``; the held-out part is then only predicted, a second
independent check). ``--reuse`` loads ``--model`` instead of fitting (it must have been
fitted on the same split: the training-data sha256 is checked).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_fit import recipe

from gapfit.calibration import calibrate, describe, std_samples
from gapfit.crossval import calibrate_cv
from gapfit.data import read_frames
from gapfit.fit import _data_summary
from gapfit.model import Model
from gapfit.plots import write_plots
from gapfit.uncertainty import format_uncertainty_table, uncertainty_table


def split(n: int, fraction: float, seed: int, keep: set[int]) -> tuple[list, list]:
    """(fit, held-out) indices of ``n`` configs; ``keep`` always in the fit part."""
    rng = np.random.default_rng(seed)
    pool = np.array([k for k in range(n) if k not in keep])
    held = np.sort(rng.permutation(pool)[: round(fraction * len(pool))])
    return sorted(set(range(n)) - set(held)), held.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="train.xyz, test.xyz")
    ap.add_argument("--holdout", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-sparse", type=int, default=500)
    ap.add_argument("--no-2b", action="store_true", help="SOAP only")
    ap.add_argument("--per-config-type", action="store_true")
    ap.add_argument("--cv", type=int, help="calibrate by K-fold cross-validation")
    ap.add_argument("--model", type=Path, default=Path("bench_calibration.npz"))
    ap.add_argument("--reuse", action="store_true", help="load --model, do not fit")
    ap.add_argument("--plot", type=Path, help="write the test-set plots here")
    ap.add_argument(
        "--optimise-hyperparameters",
        action="store_true",
        help="delta and sigmas by the evidence before calibrating",
    )
    args = ap.parse_args()

    frames = read_frames(args.data / "train.xyz", require=("energy", "forces"))
    isolated = {k for k, f in enumerate(frames) if f.config_type == "isolated_atom"}
    fit_idx, held_idx = split(len(frames), args.holdout, args.seed, isolated)
    train = [frames[k] for k in fit_idx]
    held = [frames[k] for k in held_idx]
    test = read_frames(args.data / "test.xyz")
    print(f"fit on {len(train)} configs, calibrate on {len(held)}, test {len(test)}")
    t0 = time.perf_counter()
    if args.reuse:
        model = Model.load(args.model)
        if model.info["data"]["sha256"] != _data_summary(train)["sha256"]:
            raise SystemExit(f"{args.model} was not fitted on this split; refit.")
    else:
        gap = recipe(args.n_sparse, args.no_2b)
        gap.optimise_hyperparameters = args.optimise_hyperparameters
        model = gap.fit(train).model_
        model.save(args.model)
    print(f"fit/load {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    if args.cv:
        result = calibrate_cv(model, train, args.cv, args.seed, args.per_config_type)
    else:
        result = calibrate(model, held, args.per_config_type)
    model = result.model
    model.save(args.model.with_name(args.model.stem + "_calibrated.npz"))
    print(f"calibration {time.perf_counter() - t0:.1f} s")
    print(describe(model.calibration))
    table = uncertainty_table(result.samples)
    what = (
        f"{args.cv}-fold cross-validation" if args.cv else "held-out (calibration) set"
    )
    print(format_uncertainty_table(table, what))
    if args.cv:
        samples = std_samples(model, held, model.predict(held, std=True))
        print(format_uncertainty_table(uncertainty_table(samples), "held-out set"))

    t0 = time.perf_counter()
    preds = model.predict(test, std=True)
    print(f"test prediction with std {time.perf_counter() - t0:.1f} s")
    samples = std_samples(model, test, preds)
    print(format_uncertainty_table(uncertainty_table(samples), "test set"))
    if args.plot:
        paths = write_plots(args.plot, samples)
        print(f"wrote {', '.join(p.name for p in paths)} to {args.plot}")


if __name__ == "__main__":
    main()
