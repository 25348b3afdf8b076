"""Predictions on one large cell: wall time and peak RSS per std mode.

    python benchmarks/bench_large_cell.py [--model potentials/cu_emt/model.npz]
        [--repeat 8]

A rattled fcc Cu supercell of 4 n^3 atoms (0.05 Å, seed 0) predicted by
``Model.predict`` with no stds, the energy stds alone and every std, each mode in a
fresh process (so each peak RSS is that mode's own): the first call (compilation
included) and the second, and the process's peak resident set size. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from ase.build import bulk

MODES = {"mean": False, "energy stds": "energy", "all stds": True}


def run_mode(model_path: str, repeat: int, mode: str) -> dict:
    """Time ``Model.predict`` on the cell in this process (see module doc)."""
    from gapfit.model import Model

    model = Model.load(model_path)
    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(repeat)
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        model.predict([atoms], std=MODES[mode])
        seconds.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "atoms": len(atoms),
        "first_s": seconds[0],
        "second_s": seconds[1],
        "peak_gib": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="potentials/cu_emt/model.npz")
    ap.add_argument("--repeat", type=int, default=8, help="n: 4 n^3 atoms")
    ap.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:  # the child process of one mode
        print(json.dumps(run_mode(args.model, args.repeat, args.mode)))
        return
    print(
        f"{'mode':<12}{'atoms':>7}{'first call s':>14}{'second s':>10}"
        f"{'peak RSS GiB':>14}"
    )
    for mode in MODES:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--repeat",
                str(args.repeat),
                "--mode",
                mode,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{mode:<12}{r['atoms']:>7}{r['first_s']:>14.2f}{r['second_s']:>10.2f}"
            f"{r['peak_gib']:>14.2f}"
        )


if __name__ == "__main__":
    main()
