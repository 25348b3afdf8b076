"""The ZBL core repulsion (gapfit.zbl): the published pair energy, its switch, and
forces and stress that are the derivatives of its energy."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from checks import assert_forces_match_fd, assert_stress_matches_strain_fd

from gapfit.baseline import Baseline
from gapfit.errors import GapfitError
from gapfit.zbl import ZBL


def zbl_by_hand(z1: int, z2: int, r: float) -> float:
    """Ziegler-Biersack-Littmark universal potential, eV, written out here."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (
        0.18175 * np.exp(-3.19980 * x)
        + 0.50986 * np.exp(-0.94229 * x)
        + 0.28022 * np.exp(-0.40290 * x)
        + 0.02817 * np.exp(-0.20162 * x)
    )
    return 14.399645 * z1 * z2 / r * phi


def dimer(r: float, symbols: str = "CuAu") -> Atoms:
    atoms = Atoms(symbols, positions=[[0, 0, 0], [r, 0.3 * r, 0]])
    atoms.calc = ZBL(r_inner=1.0, r_outer=2.0)
    return atoms


def test_dimer_energy_is_the_zbl_formula_inside_and_zero_outside() -> None:
    r = 0.8 / np.hypot(1, 0.3)  # 0.8 Å apart: the full repulsion
    atoms = dimer(r)
    assert atoms.get_potential_energy() == pytest.approx(
        zbl_by_hand(29, 79, 0.8), rel=1e-12
    )
    assert atoms.get_potential_energies().sum() == pytest.approx(
        atoms.get_potential_energy(), rel=1e-14
    )
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-9)
    assert np.dot(forces[1], atoms.positions[1]) > 0  # repulsive
    assert dimer(2.0 / np.hypot(1, 0.3) + 1e-9).get_potential_energy() == 0.0
    # the switch: half way between r_inner and r_outer, s = 1/2
    half = dimer(1.5 / np.hypot(1, 0.3)).get_potential_energy()
    assert half == pytest.approx(0.5 * zbl_by_hand(29, 79, 1.5), rel=1e-12)


def test_forces_and_stress_are_derivatives_of_the_energy() -> None:
    """A squeezed, rattled fcc cell with pairs on both sides of the switch."""
    atoms = bulk("Cu", "fcc", a=2.9, cubic=True).repeat(2)  # neighbours 2.05 Å
    atoms.numbers[::3] = 79
    atoms.positions += np.random.default_rng(0).normal(0, 0.12, atoms.positions.shape)
    calc = ZBL(r_inner=1.2, r_outer=2.1)

    def results(a: Atoms) -> dict:
        a = a.copy()
        a.calc = calc
        return {
            "energy": a.get_potential_energy(),
            "forces": a.get_forces(),
            "stress": a.get_stress(),
        }

    assert results(atoms)["energy"] > 0
    assert_forces_match_fd(results, atoms, h=1e-4, order=4, rtol=1e-7)
    assert_stress_matches_strain_fd(results, atoms, h=1e-5, order=4, rtol=1e-7)


def test_zbl_is_a_named_baseline() -> None:
    base = Baseline.of("zbl", {"r_inner": 0.8, "r_outer": 1.6})
    values = base.values(dimer(0.7 / np.hypot(1, 0.3)))
    assert values.energy == pytest.approx(zbl_by_hand(29, 79, 0.7), rel=1e-12)
    with pytest.raises(GapfitError, match="need 0 < r_inner < r_outer"):
        Baseline.of("zbl", {"r_inner": 2.0, "r_outer": 1.0})
