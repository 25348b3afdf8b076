"""Small seeded EMT Cu and Cu/Au data shared by the tests (one SOAP setting and one
cell size for the active-learning tests, so they share their jit compilations)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list

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


def alloy(atoms: Atoms, rng: np.random.Generator, n_au: int = 6) -> Atoms:
    """``atoms`` with ``n_au`` random sites made Au (in place)."""
    atoms.numbers[rng.choice(len(atoms), n_au, replace=False)] = 79
    return atoms


def cu_au_frames(seed: int, n_cu: int, n_alloy: int) -> list[Atoms]:
    """``n_cu`` Cu cells and ``n_alloy`` Cu/Au cells (``cu_cell``), EMT-labelled."""
    rng = np.random.default_rng(seed)
    cells = [cu_cell(rng) for _ in range(n_cu)]
    cells += [alloy(cu_cell(rng), rng) for _ in range(n_alloy)]
    return [emt_labelled(a) for a in cells]


def clear_alloy_cell(seed: int, kinks: tuple[float, ...], n_au: int = 6) -> Atoms:
    """A gently rattled Cu/Au cell (``n_au`` Au atoms) none of whose distances (to
    5.5 Å) lies within 0.02 Å of a cutoff function's kink, where finite differences
    lose accuracy."""
    rng = np.random.default_rng(seed)
    atoms = alloy(cu_cell(rng, rattle=0.04, strain=0.01), rng, n_au)
    d = neighbor_list("d", atoms, 5.5)
    assert np.abs(d[:, None] - np.array(kinks)[None]).min() > 0.02, "near a kink"
    return atoms


def predictor(model, std: bool = False):
    """``atoms -> model.predict([atoms], std=std)[0]`` (the checks' calc_fn)."""
    return lambda atoms: model.predict([atoms], std=std)[0]
