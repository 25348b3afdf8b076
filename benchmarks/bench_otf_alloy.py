"""On-the-fly learning of a Cu/Au alloy: one SOAP term per element against one term.

    python benchmarks/bench_otf_alloy.py [--steps 1000 --temperature 800 ...]

A 108-atom fcc cell with 27 random Au atoms runs EMT-labelled on-the-fly Langevin MD
(``gapfit.learn.learn_otf``) twice, each in a process of its own: with gap_fit's
per-element SOAP terms (``add_species=F n_species=2 species_Z={29 79} Z=...``, each
``--n-sparse`` points) and with one ``add_species=T`` term (``--n-sparse`` points per
element), the settings otherwise equal. The test set is independent EMT MD of the
same cell at the same temperature. The table gives labels, sparse points, test
energy and force RMSEs of the final model and the run's wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time

import numpy as np

SOAP = "cutoff=4.5 cutoff_transition_width=1.0 n_max=5 l_max=4 delta=0.5"
SPECIES = "add_species=F n_species=2 species_Z={29 79}"


def alloy_cell():
    """The 108-atom Cu cell with 27 Au atoms at random sites (seed 0)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    rng = np.random.default_rng(0)
    atoms.numbers[rng.choice(len(atoms), 27, replace=False)] = 79
    return atoms


def test_frames(temperature: float, n: int):
    """``n`` EMT-labelled frames 100 steps (2 fs) apart of Langevin MD."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = alloy_cell()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(
        atoms, temperature_K=temperature, rng=np.random.default_rng(5)
    )
    md = Langevin(
        atoms,
        2 * units.fs,
        temperature_K=temperature,
        friction=0.02,
        rng=np.random.default_rng(6),
    )
    frames = []
    for _ in range(n):
        md.run(100)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(
            frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
        )
        frames.append(frame)
    return frames


def run(per_element: bool, args: argparse.Namespace) -> dict:
    """One on-the-fly run (in a process of its own)."""
    from gapfit.fit import GAP
    from gapfit.learn import learn_otf

    sigmas = {"default_sigma": (0.002, 0.05, 0.05), "e0_method": "average"}
    soap = f"{SOAP} n_sparse={args.n_sparse}"
    terms = [f"{soap} {SPECIES} Z={z}" for z in (29, 79)] if per_element else soap
    test = test_frames(args.temperature, args.n_test)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        run = learn_otf(
            workdir,
            "emt",
            alloy_cell(),
            GAP(soap=terms, **sigmas),
            test,
            steps=args.steps,
            temperature=args.temperature,
            std_threshold=args.threshold,
            budget=args.budget,
            progress=False,
        )
        wall = time.perf_counter() - t0
    row = run.curve[-1]
    return {
        "labels": len(run.labelled),
        "sparse": run.n_sparse,
        "e_rmse": row["e_rmse"],
        "f_rmse": row["f_rmse"],
        "wall": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--temperature", type=float, default=800.0, help="K")
    ap.add_argument("--threshold", type=float, default=0.05, help="eV/Å")
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--n-sparse", type=int, default=150, help="per element")
    ap.add_argument("--n-test", type=int, default=10)
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    rows = {}
    for per_element in (True, False):  # one at a time: each process has both cores
        with ctx.Pool(1) as pool:
            rows[per_element] = pool.apply(run, (per_element, args))
    print(
        f"{'SOAP terms':28s} {'labels':>6s} {'sparse':>6s} {'E meV/atom':>10s} "
        f"{'F meV/Å':>8s} {'wall s':>7s}"
    )
    for per_element, r in rows.items():
        name = "one per element (Cu, Au)" if per_element else "one add_species=T"
        print(
            f"{name:28s} {r['labels']:6d} {r['sparse']:6d} {r['e_rmse']:10.3f} "
            f"{r['f_rmse']:8.1f} {r['wall']:7.0f}"
        )


if __name__ == "__main__":
    main()
