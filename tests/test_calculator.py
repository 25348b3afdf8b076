"""GAPCalculator: ASE results and *_std results of a fitted model, and NVE stability."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from gapfit import GAP, GAPCalculator, GapfitError, Model

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=4 l_max=3 n_sparse=60"


def cu_cell(
    rng: np.random.Generator, rattle: float = 0.1, strain: float = 0.02
) -> Atoms:
    """A strained, rattled 2x2x2 cubic fcc Cu cell (32 atoms)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    eps = rng.normal(0.0, strain, (3, 3))
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
    )
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def emt_labelled(atoms: Atoms, config_type: str) -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    if atoms.pbc.all():
        atoms.get_stress()
    atoms.info["config_type"] = config_type
    return atoms


@pytest.fixture(scope="module")
def model() -> Model:
    rng = np.random.default_rng(0)
    frames = [emt_labelled(cu_cell(rng), "bulk") for _ in range(12)]
    frames.append(
        emt_labelled(
            Atoms("Cu", positions=[[10.0, 10.0, 10.0]], cell=[20.0] * 3, pbc=True),
            "isolated_atom",
        )
    )
    return GAP(soap=SOAP, rnd_seed=1).fit(frames).model_


@pytest.fixture(scope="module")
def cell() -> Atoms:
    return cu_cell(np.random.default_rng(42), rattle=0.05)


def test_bulk_results_shapes_and_stds(model: Model, cell: Atoms) -> None:
    atoms = cell.copy()
    atoms.calc = GAPCalculator(model)
    n = len(atoms)
    assert np.isfinite(atoms.get_potential_energy())
    energy = atoms.get_potential_energy()
    assert energy == atoms.get_potential_energy(force_consistent=True)
    assert atoms.get_potential_energies().shape == (n,)
    assert atoms.get_forces().shape == (n, 3)
    assert atoms.get_stress().shape == (6,)
    res = atoms.calc.results
    assert res["energy_std"] > 0
    assert res["energies_std"].shape == (n,) and (res["energies_std"] > 0).all()
    assert res["forces_std"].shape == (n, 3) and (res["forces_std"] > 0).all()
    assert res["stress_std"].shape == (6,) and (res["stress_std"] > 0).all()
    # local energies add up to the total (both include e0)
    assert np.isclose(res["energies"].sum(), res["energy"], rtol=0, atol=1e-9)


def test_results_equal_model_predict(model: Model, cell: Atoms) -> None:
    atoms = cell.copy()
    atoms.calc = GAPCalculator(model)
    atoms.get_forces()
    (ref,) = model.predict([cell], std=True)
    for key in (
        "energy",
        "energies",
        "forces",
        "stress",
        "energy_std",
        "energies_std",
        "forces_std",
        "stress_std",
    ):
        np.testing.assert_allclose(
            atoms.calc.results[key], ref[key], rtol=1e-12, atol=1e-12, err_msg=key
        )


def test_energy_stds_only(model: Model, cell: Atoms) -> None:
    atoms = cell.copy()
    atoms.calc = GAPCalculator(model, std="energy")
    atoms.get_stress()
    (ref,) = model.predict([cell], std=True)
    res = atoms.calc.results
    assert "forces_std" not in res and "stress_std" not in res
    for key in ("energy_std", "energies_std"):
        np.testing.assert_allclose(res[key], ref[key], rtol=1e-6, err_msg=key)
    with pytest.raises(GapfitError, match="not a std mode"):
        GAPCalculator(model, std="force")


def test_loads_model_file(model: Model, cell: Atoms, tmp_path) -> None:
    path = tmp_path / "model.npz"
    model.save(path)
    atoms = cell.copy()
    atoms.calc = GAPCalculator(str(path), std=False)
    (ref,) = model.predict([cell])
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], rtol=0, atol=1e-12)
    assert "forces_std" not in atoms.calc.results


def test_molecule_has_no_stress(model: Model) -> None:
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    cluster.calc = GAPCalculator(model)
    assert cluster.get_forces().shape == (4, 3)
    assert cluster.calc.results["forces_std"].shape == (4, 3)
    assert "stress_std" not in cluster.calc.results
    with pytest.raises(PropertyNotImplementedError):
        cluster.get_stress()


def test_unknown_species_is_a_clear_error(model: Model, cell: Atoms) -> None:
    atoms = cell.copy()
    atoms[0].symbol = "Au"
    atoms.calc = GAPCalculator(model, std=False)
    with pytest.raises(GapfitError, match="Au"):
        atoms.get_potential_energy()


def test_nve_conserves_energy(model: Model) -> None:
    # Velocity Verlet with exact forces F = -dE/dr of a smooth (C^1) potential keeps
    # Epot + Ekin constant up to O(dt^2) oscillations; a drift would mean inconsistent
    # forces or a discontinuous energy.
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = GAPCalculator(model, std=False)
    with warnings.catch_warnings():  # deprecated in ase 3.29, the only way before
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(
            atoms, temperature_K=300, rng=np.random.default_rng(7)
        )
    totals, temperatures = [], []

    def record() -> None:
        totals.append(atoms.get_total_energy())
        temperatures.append(atoms.get_temperature())

    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(200)
    totals = np.array(totals)
    drift = (totals.max() - totals.min()) / len(atoms)
    assert np.isfinite(totals).all()
    assert drift < 5e-3, f"total energy varies by {drift * 1e3:.3f} meV/atom"
    # from a perfect lattice at 300 K, equipartition gives about 150 K on average
    assert 50 < np.mean(temperatures[50:]) < 400


def test_md_example_runs():
    """examples/md_with_uncertainty.py: calibrated force stds near the errors along
    MD, and larger stds and errors on the squeezed cell."""
    path = Path(__file__).parents[1] / "examples" / "md_with_uncertainty.py"
    spec = importlib.util.spec_from_file_location("md_with_uncertainty", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    *md, squeezed = example.main(steps=20, check_every=10)
    assert [r["frame"] for r in md] == ["MD step 0", "MD step 10", "MD step 20"]
    for r in md[1:]:
        assert 1 / 3 < r["f_rmse"] / r["f_rms_std"] < 3
    assert squeezed["forces_std"] > max(r["forces_std"] for r in md)
    assert squeezed["f_rmse"] > 3 * max(r["f_rmse"] for r in md)
