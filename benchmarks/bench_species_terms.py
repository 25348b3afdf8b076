"""One SOAP term over every element against one SOAP term per element.

    python benchmarks/bench_species_terms.py --data ../shared/data/ethanol_rmd17_100

gap_fit's ``add_species=T`` makes one GP per central element with shared settings;
wfl's multistage fits write the terms out instead (``add_species=F Z=...
n_species=... species_Z={...}``), so each element has its own ``delta`` (and may
have its own ``n_sparse``). Both are fitted here with the evidence choosing every
delta and the sigma factors (``--optimise-hyperparameters``), each in its own
process (peak RSS is per fit), on ``train.xyz``; the table gives test RMSEs on
``test.xyz``, fit wall time, peak RSS, each term's delta and ms per prediction of
one test configuration (median of 30, with and without every std).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np

SOAP = (
    "cutoff=5.0 cutoff_transition_width=1.0 n_max=8 l_max=6 atom_sigma=0.5 zeta=4 "
    "delta=1.0 sparse_method=cur_points"
)
PAIR = "cutoff=5.0 cutoff_transition_width=1.0 delta=1.0 theta_uniform=1.0 n_sparse=20"


def settings(per_element: dict[int, int] | None, n_sparse: int) -> dict:
    """``GAP`` arguments: one SOAP term with ``n_sparse`` points per element, or one
    term per element with ``per_element[Z]`` points."""
    if per_element is None:
        soap: str | list[str] = f"{SOAP} n_sparse={n_sparse}"
    else:
        listed = " ".join(map(str, sorted(per_element)))
        head = f"add_species=F n_species={len(per_element)} species_Z={{{listed}}}"
        soap = [f"{SOAP} {head} Z={z} n_sparse={n}" for z, n in per_element.items()]
    return {
        "soap": soap,
        "distance_2b": PAIR,
        "default_sigma": (0.001, 0.05, 0.05, 0.0),
        "e0_method": "average",
        "optimise_hyperparameters": True,
    }


def run(data: str, per_element: dict[int, int] | None, n_sparse: int) -> dict:
    """Fit, score and time one variant (in a process of its own)."""
    from gapfit.data import read_frames
    from gapfit.fit import GAP
    from gapfit.report import error_table

    train = read_frames(Path(data) / "train.xyz")
    test = read_frames(Path(data) / "test.xyz")
    t0 = time.perf_counter()
    model = GAP(**settings(per_element, n_sparse)).fit(train).model_
    fit_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    errors = error_table(test, model.predict(test))["all"]
    timing = {}
    for std in (False, True):
        model.predict(test[:1], std=std)  # compile
        ts = []
        for f in test[:30]:
            t = time.perf_counter()
            model.predict([f], std=std)
            ts.append(1e3 * (time.perf_counter() - t))
        timing[std] = float(np.median(ts))
    soap = [t for t in model.terms if t.kind == "soap"]
    return {
        "terms": {t.name: (t.kernel.delta, t.n_sparse) for t in soap},
        "e": errors["energy"]["rmse"],
        "f": errors["forces"]["rmse"],
        "fit_s": fit_s,
        "rss": rss,
        "ms": timing[False],
        "ms_std": timing[True],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with train.xyz, test.xyz")
    ap.add_argument("--n-sparse", type=int, default=100, help="per element, one term")
    ap.add_argument(
        "--per-element",
        default="1:100,6:100,8:100",
        help="Z:n_sparse of each per-element term (default: as --n-sparse)",
    )
    args = ap.parse_args()
    per_element = {
        int(z): int(n) for z, n in (x.split(":") for x in args.per_element.split(","))
    }
    variants = {
        "one SOAP term (add_species=T)": None,
        "one SOAP term per element": per_element,
    }
    ctx = multiprocessing.get_context("spawn")
    rows = {}
    for name, chosen in variants.items():
        with ctx.Pool(1) as pool:
            rows[name] = pool.apply(run, (args.data, chosen, args.n_sparse))
    print(f"\n{args.data}: 2-body + SOAP, every delta and sigma by the evidence\n")
    print(
        f"{'variant':<32}{'E meV/atom':>11}{'F meV/Å':>9}{'fit s':>7}{'GiB':>6}"
        f"{'ms':>6}{'ms std':>8}  SOAP delta (M)"
    )
    for name, r in rows.items():
        deltas = ", ".join(f"{n} {d:.3g} ({m})" for n, (d, m) in r["terms"].items())
        print(
            f"{name:<32}{r['e']:>11.2f}{r['f']:>9.1f}{r['fit_s']:>7.0f}"
            f"{r['rss']:>6.2f}{r['ms']:>6.1f}{r['ms_std']:>8.1f}  {deltas}"
        )


if __name__ == "__main__":
    main()
