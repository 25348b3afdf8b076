"""The ZBL universal screened nuclear repulsion as an ASE calculator: the usual core
potential under a GAP, for close approaches (radiation damage, high pressure), where
training data are scarce and a GP falls back to its prior.

Pair energy (Ziegler, Biersack & Littmark, *The Stopping and Range of Ions in
Solids*, Pergamon 1985)::

    u(r) = s(r) Z_i Z_j e^2 / (4 pi eps_0 r) phi(r / a)
    a = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x)
           + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x)

switched off between ``r_inner`` and ``r_outer`` (Å) by ``s = 1 - 10 t^3 + 15 t^4 -
6 t^5``, ``t = (r - r_inner) / (r_outer - r_inner)`` (continuous with its first two
derivatives), zero beyond. Named ``zbl`` for ``--baseline``/``--labeller``
(``--baseline zbl --baseline-kwargs '{"r_inner": 1.0, "r_outer": 2.0}'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from gapfit.blocks import voigt_of
from gapfit.neighbours import pairs

COULOMB = 14.399645  # e^2 / (4 pi eps_0), eV Å
SCREENING_LENGTH = 0.46850  # Å
SCREENING_POWER = 0.23
PHI_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
PHI_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])


def pair_energy(
    r: np.ndarray, zz: np.ndarray, a: np.ndarray, r_inner: float, r_outer: float
) -> tuple[np.ndarray, np.ndarray]:
    """Switched ZBL pair energies ``u`` (eV) and ``du/dr`` (eV/Å) at distances ``r``
    (Å) for charge products ``zz`` and screening lengths ``a`` (Å)."""
    x = r[:, None] / a[:, None]
    terms = PHI_C * np.exp(-PHI_D * x)
    phi = terms.sum(axis=1)
    dphi = -(terms * PHI_D).sum(axis=1) / a  # d phi / dr
    coulomb = COULOMB * zz / r
    u = coulomb * phi
    du = coulomb * (dphi - phi / r)
    t = np.clip((r - r_inner) / (r_outer - r_inner), 0.0, 1.0)
    s = 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)
    ds = -30.0 * t**2 * (1.0 - t) ** 2 / (r_outer - r_inner)
    return u * s, du * s + u * ds


class ZBL(Calculator):
    """ASE calculator of the switched ZBL repulsion (module docstring): energy,
    per-atom energies (half of each pair's), forces, and stress for 3D cells.

    Args:
        r_inner: Å, full ZBL below this distance.
        r_outer: Å, zero from this distance on.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict[str, Any] = {"r_inner": 1.0, "r_outer": 2.0}
    nolabel = True

    def __init__(self, r_inner: float = 1.0, r_outer: float = 2.0, **kwargs: Any):
        if not 0.0 < r_inner < r_outer:
            raise ValueError(
                f"r_inner {r_inner} and r_outer {r_outer}: need 0 < r_inner < r_outer "
                "(Å; the switching region)."
            )
        super().__init__(r_inner=float(r_inner), r_outer=float(r_outer), **kwargs)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        p = self.parameters
        i, j, D = pairs(atoms, p.r_outer)  # each pair both ways
        r = np.linalg.norm(D, axis=1)
        z = atoms.numbers.astype(float)
        zz = z[i] * z[j]
        a = SCREENING_LENGTH / (z[i] ** SCREENING_POWER + z[j] ** SCREENING_POWER)
        u, du = pair_energy(r, zz, a, p.r_inner, p.r_outer)
        n = len(atoms)
        energies = 0.5 * np.bincount(i, weights=u, minlength=n)
        # E = 1/2 sum over both directions: dE/dD_ij = 1/2 du D/r acts on j, -that on i
        g = 0.5 * (du / r)[:, None] * D
        forces = np.zeros((n, 3))
        for axis in range(3):
            forces[:, axis] = np.bincount(
                i, weights=g[:, axis], minlength=n
            ) - np.bincount(j, weights=g[:, axis], minlength=n)
        self.results["energies"] = energies
        self.results["energy"] = self.results["free_energy"] = float(energies.sum())
        self.results["forces"] = forces
        if atoms.cell.rank == 3:
            stress = (g.T @ D) / atoms.get_volume()  # (1/V) sum dE/dD (x) D
            stress = 0.5 * (stress + stress.T)
            self.results["stress"] = voigt_of(stress)
