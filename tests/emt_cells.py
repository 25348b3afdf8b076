"""Small seeded EMT Cu data shared by the active-learning tests (one SOAP setting and
one cell size, so the tests share their jit compilations)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=3 l_max=2 n_sparse=24"
CAPACITY = 24  # SOAP sparse points of the models (Cu only)


def cu_cell(rng: np.random.Generator, rattle: float = 0.1, strain: float = 0.02):
    """A strained, rattled 2x2x2 cubic fcc Cu cell (32 atoms), unlabelled."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    eps = rng.normal(0.0, strain, (3, 3))
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
    )
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def emt_labelled(atoms: Atoms) -> Atoms:
    """A copy with EMT energy, forces and stress in a SinglePointCalculator."""
    out = atoms.copy()
    out.calc = EMT()
    results = {
        "energy": out.get_potential_energy(),
        "forces": out.get_forces(),
        "stress": out.get_stress(),
    }
    out.calc = SinglePointCalculator(out, **results)
    return out


def cu_cells(n: int, seed: int, labelled: bool = True, **kw) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    cells = [cu_cell(rng, **kw) for _ in range(n)]
    return [emt_labelled(a) for a in cells] if labelled else cells
