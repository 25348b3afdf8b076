"""Active learning with ASE's EMT as the labeller (well under a minute on 2 cores).

1. Pool mode: from 2 random seeds, label batches of the most uncertain, mutually
   different structures of a generated pool of 32-atom fcc Cu cells (strained,
   rattled by 0.02-0.12 Å), with a learning curve on a labelled test set.
2. On-the-fly mode: Langevin MD at 1200 K driven by the GAP, labelling each frame whose
   largest force std exceeds 0.15 eV/Å.

Small SOAP (n_max 3, l_max 2) and at most 24 sparse points keep it fast; raise them for
real work. Run ``python examples/learn_emt.py [WORKDIR]``; the runs' files (model.npz,
labelled.xyz, log.jsonl, curve.csv, curve.png) go to WORKDIR/pool and WORKDIR/md.
The same from the command line::

    gapfit learn --pool pool.xyz --test test.xyz --labeller emt --workdir run \\
        --soap "cutoff=4.0 n_max=3 l_max=2 n_sparse=24" --n-seed 2 --batch-size 2 \\
        --budget 12
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from gapfit import GAP
from gapfit.labeller import label
from gapfit.learn import Learner, learn_otf, learn_pool

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=3 l_max=2 n_sparse=24"


def cu_cells(n: int, seed: int) -> list[Atoms]:
    """32-atom fcc Cu cells with random strain (0-2 %) and rattling (0.02-0.12 Å)."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        eps = rng.normal(0.0, rng.uniform(0.0, 0.02), (3, 3))
        atoms.set_cell(
            atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
        )
        atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.12), (len(atoms), 3))
        cells.append(atoms)
    return cells


def main(
    workdir: str | Path | None = None,
    n_pool: int = 60,
    budget: int = 12,
    md_steps: int = 40,
    progress: bool = True,
) -> tuple[Learner, Learner]:
    """Run both modes in ``workdir`` (a new temporary directory by default)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="learn_emt_"))
    gap = GAP(soap=SOAP, e0_method="average")
    test = [label(EMT(), cell) for cell in cu_cells(8, seed=99)]  # EMT labels

    pool = learn_pool(
        workdir / "pool",
        "emt",
        cu_cells(n_pool, seed=1),
        gap,
        test,
        n_seed=2,
        batch_size=2,
        budget=budget,
        seed=1,
        progress=progress,
    )
    print("pool mode\n" + pool.summary())

    start = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    md = learn_otf(
        workdir / "md",
        "emt",
        start,
        gap,
        test,
        sampler="md",
        steps=md_steps,
        temperature=1200.0,
        std_threshold=0.15,
        seed=1,
        progress=progress,
    )
    print("on-the-fly MD\n" + md.summary())
    return pool, md


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
