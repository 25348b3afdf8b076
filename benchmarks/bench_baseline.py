"""Δ-learning on a shared data set: test errors of fits with and without a baseline
potential under the GP, on growing random subsets of the training data.

    python benchmarks/bench_baseline.py --data ../shared/data/si_zuo2020 \\
        --baseline ase.calculators.tersoff:Tersoff.from_lammps \\
        --baseline-kwargs '{"potential_file": "benchmarks/Si.tersoff"}' \\
        [--fractions 0.25 0.5 1] [--soap "..."] [--default-sigma 0.01 0.05 0.01]
        [--seed 0] [--virials] [--contact-reference emt] [--json out.json]

For each fraction f, the first ceil(f n) configurations of a seeded permutation of
``train.xyz`` are fitted twice with the same settings (``GAP``; e0 ``average``): once
plain and once with the baseline (``GAP(baseline=...)``), and both predict
``test.xyz``. The table gives the test energy RMSE (meV/atom), force RMSE (meV/Å) and
fit wall time (s, the baseline's labels of the training frames included) of each, and
the baseline's own test errors (its energies shifted by the mean per-atom offset from
the training labels). Energies and forces only unless ``--virials`` (as Zuo et al.
fitted). ``benchmarks/Si.tersoff`` holds Tersoff's Si(B) parameters for ASE's
``Tersoff``.

The last table times ``GAPCalculator`` energy + forces + stress (means only) of the
108-atom cell of ``bench_fit.py`` with both fits of the whole set: ms per call
(median, min, max of 30): what the baseline adds to each MD step.

``--contact-reference NAME`` (a labeller name, e.g. ``emt`` for cu_emt) adds the use
gap_fit's core potentials are mostly for: close contacts. In the first periodic test
configuration, atom 0 is moved along the bond to its nearest neighbour until they are
``--distances`` apart; the table gives the energy change from the unmoved cell (eV) by
the reference, both fits of the whole training set and the baseline alone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from bench_fit import bench_cell, time_calls

from gapfit import GAP, GAPCalculator
from gapfit.baseline import Baseline
from gapfit.data import Frame, LabelKeys, read_frames
from gapfit.labeller import make_labeller
from gapfit.report import error_table

SOAP = (
    "cutoff=5.4 cutoff_transition_width=0.5 n_max=8 l_max=6 atom_sigma=0.5 zeta=4 "
    "delta=1.0 n_sparse=300 sparse_method=cur_points"
)


def errors(table: dict) -> tuple[float, float]:
    """Energy RMSE (meV/atom) and force RMSE (meV/Å) of an ``error_table``."""
    every = table["all"]
    return every["energy"]["rmse"], every["forces"]["rmse"]


def baseline_errors(baseline: Baseline, train, test) -> tuple[float, float]:
    """The baseline's own test errors, its energies shifted by the mean per-atom
    offset of the training labels."""
    offset = np.mean(
        [(f.energy - baseline.values(f).energy) / len(f.numbers) for f in train]
    )
    preds = []
    for f in test:
        v = baseline.values(f)
        preds.append(
            {
                "energy": v.energy + offset * len(f.numbers),
                "forces": v.forces,
                "virial": v.virial,
            }
        )
    return errors(error_table(test, preds))


def contact_cells(frames: list[Frame], distances: list[float]) -> list:
    """The first periodic configuration of ``frames`` unmoved, then with atom 0 moved
    along the bond to its nearest neighbour to each of ``distances`` (Å) from it."""
    atoms = next(f for f in frames if f.pbc.all() and len(f.numbers) > 1).to_atoms()
    vectors = atoms.get_distances(0, range(1, len(atoms)), mic=True, vector=True)
    bond = vectors[np.argmin(np.linalg.norm(vectors, axis=1))]
    cells = [atoms]
    for r in distances:
        moved = atoms.copy()
        moved.positions[0] += bond * (1.0 - r / np.linalg.norm(bond))
        cells.append(moved)
    return cells


def contact_table(cells: list, models: dict, reference, baseline: Baseline) -> str:
    """Energy change from the unmoved cell (eV) by the reference, the fits
    ``models["plain"]`` and ``models["baseline"]``, and the baseline, per distance."""
    columns: dict[str, list] = {"reference": [], "GAP": [], "baseline + GAP": []}
    columns["baseline alone"] = []
    for atoms in cells:
        copy = atoms.copy()
        copy.calc = reference
        columns["reference"].append(copy.get_potential_energy())
        for column, name in (("GAP", "plain"), ("baseline + GAP", "baseline")):
            columns[column].append(models[name].predict([atoms])[0]["energy"])
        columns["baseline alone"].append(baseline.values(atoms).energy)
    lines = ["r (Å)  " + " ".join(f"{k:>15}" for k in columns)]
    for k, atoms in enumerate(cells[1:], start=1):
        moved = atoms.get_distances(0, range(1, len(atoms)), mic=True).min()
        values = (v[k] - v[0] for v in columns.values())
        lines.append(f"{moved:5.2f}  " + " ".join(f"{v:15.3f}" for v in values))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--baseline-kwargs", default=None)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1])
    parser.add_argument("--soap", default=SOAP)
    parser.add_argument(
        "--default-sigma", type=float, nargs=3, default=[0.01, 0.05, 0.01]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--virials", action="store_true")
    parser.add_argument("--contact-reference", default=None)
    parser.add_argument(
        "--distances", type=float, nargs="+", default=[2.2, 2.0, 1.8, 1.6, 1.4]
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    keys = LabelKeys() if args.virials else LabelKeys(virial="none", stress="none")
    train = read_frames(args.data / "train.xyz", keys)
    test = read_frames(args.data / "test.xyz", keys)
    baseline = Baseline.of(args.baseline, args.baseline_kwargs)
    order = np.random.default_rng(args.seed).permutation(len(train))
    settings = {
        "soap": args.soap,
        "default_sigma": args.default_sigma,
        "e0_method": "average",
        "keys": keys,
    }
    rows = []
    models: dict = {}  # the last fraction's fits
    for fraction in args.fractions:
        part = [train[i] for i in order[: math.ceil(fraction * len(train))]]
        row = {"fraction": fraction, "configs": len(part)}
        with_baseline = {"baseline": args.baseline, "baseline_kwargs": baseline.kwargs}
        for name, extra in (("plain", {}), ("baseline", with_baseline)):
            t0 = time.perf_counter()
            gap = GAP(**settings, **extra).fit(part)
            seconds = time.perf_counter() - t0
            models[name] = gap.model_
            e, f = errors(error_table(test, gap.model_.predict(test)))
            row[name] = {"energy": e, "forces": f, "fit_s": seconds}
        e, f = baseline_errors(baseline, part, test)
        row["baseline_alone"] = {"energy": e, "forces": f}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"\n{args.data.name}: test RMSE, E meV/atom / F meV/Å (fit s); baseline "
        f"{args.baseline} {json.dumps(baseline.kwargs)}"
    )
    print(
        f"{'fraction':>8} {'configs':>7} | {'GAP':>22} | {'baseline + GAP':>22} | "
        f"{'baseline alone':>15}"
    )
    for r in rows:
        p, b, a = r["plain"], r["baseline"], r["baseline_alone"]
        print(
            f"{r['fraction']:>8.2f} {r['configs']:>7} | "
            f"{p['energy']:6.2f} / {p['forces']:6.1f} ({p['fit_s']:4.0f}) | "
            f"{b['energy']:6.2f} / {b['forces']:6.1f} ({b['fit_s']:4.0f}) | "
            f"{a['energy']:6.1f} / {a['forces']:6.1f}"
        )
    cell = bench_cell(args.data.name)
    print("\n108-atom cell, E+F+S per call, means only (ms, median min max):")
    for name, model in models.items():
        t = time_calls(GAPCalculator(model, std=False), cell)
        print(f"  {name:>8}: {t['median']:.1f} {t['min']:.1f} {t['max']:.1f}")
    if args.contact_reference:
        reference = make_labeller(args.contact_reference)
        print(
            f"\nclose contact: energy change (eV) as atom 0 approaches its nearest "
            f"neighbour; fits of {rows[-1]['configs']} configs, reference "
            f"{args.contact_reference}"
        )
        cells = contact_cells(test, args.distances)
        print(contact_table(cells, models, reference, baseline))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
