"""Out-of-distribution detection by the predicted force std on a shared benchmark set.

    python benchmarks/bench_ood.py --data ../shared/data/cu_emt [--leave-out surface]
        [--optimise-hyperparameters] [--n-sparse 500] [--no-2b] [--holdout 0.15]
        [--model bench_ood.npz --reuse] [--json ood.json]

Fits bench_fit.py's recipe on train.xyz without the configurations of the left-out
config_type(s) (``--leave-out``, repeatable, default ``surface``; the isolated atom is
kept), predicts every test configuration with its std and scores each one by its
largest per-atom force std

    s = max_i sqrt(std(F_ix)² + std(F_iy)² + std(F_iz)²)   (eV/Å),

the norm of an atom's three component stds, maximised over the atoms. It prints the
ROC AUC (``sklearn.metrics.roc_auc_score``) of ``s`` for "left-out config_type
(out of distribution) against the other test configurations (in distribution)", the
same AUC for the largest per-atom force error ``max_i |F_i - F_i^ref|`` (how far the
errors themselves separate the two groups), the median scores per config_type and
the test errors in and out of distribution. ``--holdout f`` keeps a random fraction
``f`` of the kept training configurations out of the fit and calibrates the stds on
them (``gapfit.calibration``); the calibrated std then gets its own AUC (so does a
calibrated ``--model`` given with ``--reuse``). ``--reuse`` loads ``--model``
instead of fitting (checked against the training split by its sha256).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bench_calibration import split
from bench_fit import recipe
from sklearn.metrics import roc_auc_score

from gapfit.calibration import calibrate, describe, summary
from gapfit.data import Frame, read_frames
from gapfit.hyperparameters import format_report
from gapfit.model import Model, atomic_write
from gapfit.report import error_table, format_error_table

ISOLATED = "isolated_atom"


def max_atom_norm(v: np.ndarray) -> float:
    """Largest per-atom Euclidean norm of ``v`` (n_atoms, 3), in the units of ``v``."""
    return float(np.max(np.linalg.norm(np.asarray(v), axis=1)))


def config_scores(
    frames: Sequence[Frame], preds: Sequence[dict]
) -> dict[str, np.ndarray]:
    """Per configuration (n_configs,) scores, eV/Å: ``"DTC std"`` (largest per-atom
    force std norm), ``"calibrated std"`` (the same of the calibrated std, calibrated
    models only) and ``"force error"`` (largest per-atom force error norm).

    Args:
        frames: labelled frames (forces required). preds: ``predict(..., std=True)``.
    """
    dtc = [p.get("forces_std_raw", p["forces_std"]) for p in preds]
    out = {"DTC std": np.array([max_atom_norm(s) for s in dtc])}
    if any("forces_std_raw" in p for p in preds):
        out["calibrated std"] = np.array(
            [max_atom_norm(p["forces_std"]) for p in preds]
        )
    out["force error"] = np.array(
        [
            max_atom_norm(p["forces"] - f.forces)
            for f, p in zip(frames, preds, strict=True)
        ]
    )
    return out


def leave_out_split(
    frames: Sequence[Frame], leave_out: Sequence[str]
) -> tuple[list[int], list[int]]:
    """(kept, left-out) indices: configs whose config_type is in ``leave_out`` are
    left out; ``isolated_atom`` cannot be."""
    if ISOLATED in leave_out:
        raise SystemExit(f"--leave-out {ISOLATED}: the isolated atom is always kept.")
    out = [k for k, f in enumerate(frames) if f.config_type in leave_out]
    kept = [k for k, f in enumerate(frames) if f.config_type not in leave_out]
    return kept, out


def check_present(frames: Sequence[Frame], leave_out: Sequence[str], name: str) -> None:
    """Exit with a message if a left-out config_type has no config in ``frames``."""
    types = {f.config_type for f in frames}
    missing = sorted(set(leave_out) - types)
    if missing:
        raise SystemExit(
            f"{name} has no config of config_type {', '.join(missing)}; it has "
            f"{', '.join(sorted(types))}. Choose --leave-out among those."
        )


def median_table(
    frames: Sequence[Frame], scores: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """{config_type: {"n": count, score name: median score in meV/Å}}."""
    types = np.array([f.config_type for f in frames])
    return {
        ct: {
            "n": int(np.sum(types == ct)),
            **{k: 1e3 * float(np.median(v[types == ct])) for k, v in scores.items()},
        }
        for ct in sorted(set(types))
    }


def fit_or_load(args: argparse.Namespace, train: list[Frame]) -> tuple[Model, float]:
    """The recipe fitted on ``train`` (saved to ``--model``), or ``--model`` loaded
    with ``--reuse``; and the seconds it took."""
    t0 = time.perf_counter()
    if args.reuse:
        model = Model.load(args.model)
        if model.info["data"]["sha256"] != summary(train)["sha256"]:
            raise SystemExit(
                f"{args.model} was not fitted on this split (--leave-out, --holdout, "
                "--seed); refit without --reuse."
            )
    else:
        gap = recipe(args.n_sparse, args.no_2b, args.chunk_atoms, args.optimise)
        model = gap.fit(train).model_
        model.save(args.model)
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="train.xyz, test.xyz")
    ap.add_argument(
        "--leave-out",
        action="append",
        help="config_type left out of the fit (repeatable; default surface)",
    )
    ap.add_argument("--n-sparse", type=int, default=500)
    ap.add_argument("--no-2b", action="store_true", help="SOAP only")
    ap.add_argument("--chunk-atoms", type=int, default=512)
    ap.add_argument(
        "--optimise-hyperparameters",
        dest="optimise",
        action="store_true",
        help="delta and sigmas by the evidence, from the recipe's values",
    )
    ap.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="fraction of the kept training configs held out to calibrate the stds",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the --holdout split")
    ap.add_argument("--model", type=Path, default=Path("bench_ood.npz"))
    ap.add_argument("--reuse", action="store_true", help="load --model, do not fit")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    leave_out = sorted(set(args.leave_out or ["surface"]))

    frames = read_frames(args.data / "train.xyz", require=("energy", "forces"))
    check_present(frames, leave_out, "train.xyz")
    kept, left = leave_out_split(frames, leave_out)
    isolated = {k for k, f in enumerate(frames) if f.config_type == ISOLATED}
    fit_pos, held_pos = split(
        len(kept),
        args.holdout,
        args.seed,
        {i for i, k in enumerate(kept) if k in isolated},
    )
    train = [frames[kept[i]] for i in fit_pos]
    held = [frames[kept[i]] for i in held_pos]
    test = [
        f
        for f in read_frames(args.data / "test.xyz", require=("forces",))
        if f.config_type != ISOLATED
    ]
    check_present(test, leave_out, "test.xyz")
    print(
        f"left out {', '.join(leave_out)}: {len(left)} training configs; fit on "
        f"{len(train)}, calibrate on {len(held)}; test {len(test)}"
    )

    model, fit_s = fit_or_load(args, train)
    print(f"fit/load {fit_s:.1f} s")
    cal_s = 0.0
    if held and model.calibration is None:
        t0 = time.perf_counter()
        model = calibrate(model, held).model
        model.save(args.model)
        cal_s = time.perf_counter() - t0
        print(f"calibration on {len(held)} configs {cal_s:.1f} s")
    if model.calibration is not None:
        print(describe(model.calibration))
    if "hyperparameters" in model.info:
        print(format_report(model.info["hyperparameters"]))

    t0 = time.perf_counter()
    preds = model.predict(test, std=True, wheres=[f.where for f in test])
    pred_s = time.perf_counter() - t0
    print(f"test prediction with std {pred_s:.1f} s")

    scores = config_scores(test, preds)
    ood = np.array([f.config_type in leave_out for f in test])
    auc = {k: float(roc_auc_score(ood, v)) for k, v in scores.items()}
    medians = median_table(test, scores)
    groups = {"in": ~ood, "out": ood}
    errors = {
        g: error_table(
            [f for f, m in zip(test, mask, strict=True) if m],
            [p for p, m in zip(preds, mask, strict=True) if m],
        )["all"]
        for g, mask in groups.items()
    }

    print(f"\n{format_error_table(error_table(test, preds), 'test errors')}")
    print(
        f"\nout of distribution: {', '.join(leave_out)} ({int(ood.sum())} test "
        f"configs); in distribution: the other {int((~ood).sum())}"
    )
    head = (
        f"{'score':<16}{'ROC AUC':>9}{'median in':>12}{'median out':>12}"
        f"{'max in':>10}{'min out':>10}"
    )
    print(f"{head}\n{'-' * len(head)}")
    for k, v in scores.items():
        print(
            f"{k:<16}{auc[k]:>9.3f}{1e3 * np.median(v[~ood]):>12.2f}"
            f"{1e3 * np.median(v[ood]):>12.2f}{1e3 * v[~ood].max():>10.2f}"
            f"{1e3 * v[ood].min():>10.2f}"
        )
    print(
        "score: per config the largest per-atom norm (meV/Å) of the force std (the "
        "norm of the atom's 3 component stds) or of the force error"
    )
    head = f"{'config_type':<16}{'n':>5}" + "".join(f"{k:>16}" for k in scores)
    print(f"\nmedian score per config_type (meV/Å)\n{head}\n{'-' * len(head)}")
    for ct, row in medians.items():
        name = ct + (" *" if ct in leave_out else "")
        print(f"{name:<16}{row['n']:>5}" + "".join(f"{row[k]:>16.2f}" for k in scores))
    print("* left out of the fit")
    print(
        "\ntest F RMSE (meV/Å): in distribution "
        f"{errors['in']['forces']['rmse']:.3f}, out of distribution "
        f"{errors['out']['forces']['rmse']:.3f}"
    )

    if args.json:
        figures = {
            "leave_out": leave_out,
            "n_train": len(train),
            "n_calibration": len(held),
            "n_in": int((~ood).sum()),
            "n_out": int(ood.sum()),
            "auc": auc,
            "max_in_min_out_mev_per_a": {
                k: [1e3 * float(v[~ood].max()), 1e3 * float(v[ood].min())]
                for k, v in scores.items()
            },
            "median_score_mev_per_a": medians,
            "errors_in": errors["in"],
            "errors_out": errors["out"],
            "timings_s": {"fit": fit_s, "calibration": cal_s, "predict": pred_s},
            "settings": model.info.get("settings"),
        }
        atomic_write(args.json, json.dumps(figures, indent=1).encode())


if __name__ == "__main__":
    main()
