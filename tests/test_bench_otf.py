"""The per-step check and the miss counts of benchmarks/bench_otf.py."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_otf():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_otf")
    finally:
        sys.path.remove(str(BENCHMARKS))


def event(step: int, labelled: bool, shift: float, seed: int) -> dict:
    """A learn_otf step event whose prediction is EMT's forces with one component
    off by ``shift`` eV/Å; raw stds 0.05 eV/Å, scale 2 and a floor 0.03 eV/Å (so
    a s = 0.1 eV/Å and the step's std u = sqrt(0.1^2 + 0.03^2))."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=seed)
    truth = atoms.copy()
    truth.calc = EMT()
    forces = truth.get_forces()
    forces[1, 2] -= shift
    return {
        "event": "step",
        "step": step,
        "atoms": atoms,
        "max_std": 0.1,
        "std_scale": 2.0,
        "step_std": np.full_like(forces, np.hypot(0.1, 0.03)),
        "labelled": labelled,
        "forces": forces,
        "forces_std": np.full_like(forces, 0.05),
    }


def test_checker_records_errors_against_emt(bench_otf, tmp_path):
    checker = bench_otf.StepChecker(tmp_path / "steps.npz")
    checker(event(0, False, 0.0, 1))
    checker(event(1, False, 0.35, 2))
    checker(event(2, True, -0.5, 3))
    row0, row1, row2 = (checker.rows[k] for k in range(3))
    assert row0["labelled"]  # the start structure, labelled before the MD
    assert row0["max_err"] < 1e-10 and row0["n_over_3"] == 0
    # one component off by 0.35 against u = 0.1044: z = 3.35, unscaled 7
    u = np.hypot(0.1, 0.03)
    assert row1["max_err"] == pytest.approx(0.35, abs=1e-12)
    assert row1["max_z"] == pytest.approx(0.35 / u, abs=1e-9)
    assert row1["max_z_raw"] == pytest.approx(7.0, abs=1e-9)
    assert row1["n_over_3"] == 1 and not row1["labelled"]
    assert row1["rms_std"] == pytest.approx(u) and row1["max_u"] == pytest.approx(u)
    assert row2["labelled"] and row2["n_over_3"] == 1
    checker.save()
    again = bench_otf.StepChecker.load(tmp_path / "steps.npz")
    assert again.rows == checker.rows
    comp = again.component_arrays()
    assert comp["error"].shape == comp["std"].shape == (3, 4, 3)
    assert np.abs(comp["error"][1]).max() == pytest.approx(0.35, abs=1e-6)
    assert np.all(comp["std"] == np.float32(u))  # the step's predicted std


def test_what_if_counts_extra_labels_and_misses(bench_otf):
    # 3 steps of 2 components, stds u 0.02 (step 500: one 0.06); step 0 labelled
    arrays = {
        "max_std": np.array([0.02, 0.02, 0.06]),  # a max s, the labels' rule
        "labelled": np.array([True, False, False]),
    }
    components = {
        "step": np.array([0, 1, 500]),
        "error": np.array([[0.5, 0.0], [0.07, 0.0], [0.09, 0.0]]),
        "std": np.array([[0.02, 0.02], [0.02, 0.02], [0.02, 0.06]]),
    }
    rows = bench_otf.what_if(arrays, components, (1.0, 2.0), (0.05,))
    one, two = rows
    # K = 1: step 500's a max s = 0.06 > 0.05 is an extra label; step 1 (z 3.5) misses
    assert (one["extra_labels"], one["misses_before_400"]) == (1, 1)
    assert one["misses_after_400"] == 0
    # K = 2: step 1 stays under the threshold (0.04) and its z 3.5 < 6 is no miss
    assert (two["extra_labels"], two["misses_before_400"]) == (1, 0)


def test_summary_counts_only_unlabelled_misses(bench_otf):
    n = 6
    arrays = {
        "step": np.arange(n),
        "labelled": np.array([True, False, True, False, False, False]),
        "max_std": np.array([0.1, 0.1, 0.1, 0.1, 0.12, 0.1]),
        "max_u": np.array([0.1, 0.1, 0.1, 0.1, 0.12, 0.11]),
        "max_err": np.array([0.0, 0.25, 0.9, 0.35, 0.05, 0.31]),
        "max_z": np.array([0.0, 2.5, 9.0, 3.5, 0.5, 4.0]),
        "n_over_3": np.array([0, 0, 5, 1, 0, 2]),
        "rms_err": np.full(n, 0.02),
        "rms_std": np.full(n, 0.03),
        "std_scale": np.full(n, 2.0),
        "temperature": np.full(n, 1200.0),
    }
    s = bench_otf.summary(arrays, n_components=10, threshold=0.11)
    assert s["misses"] == 2 and s["first_miss_step"] == 3  # steps 3 and 5
    assert s["last_labelled_step"] == 2
    assert s["unlabelled_over_threshold"] == 1  # step 4
    assert s["miss_fraction_of_unlabelled_steps"] == pytest.approx(2 / 4)
    assert s["miss_components_fraction"] == pytest.approx(3 / 40)
    assert s["step_level_misses"] == 1  # 0.35 > 3 x 0.1; 0.31 < 3 x 0.11
    assert s["max_err_unlabelled"] == pytest.approx(0.35)
    assert s["std_factor_for_no_miss"] == pytest.approx(4.0 / 3.0)
    # P(|z| > 3) of a standard normal, and of at least one of 10 components
    assert s["calibrated_gaussian_components_fraction"] == pytest.approx(
        0.0026998, rel=1e-5
    )
    assert s["calibrated_gaussian_miss_fraction"] == pytest.approx(
        1 - (1 - 0.0026998) ** 10, rel=1e-4
    )


def test_atom_misses_compare_error_and_std_vector_lengths(bench_otf):
    # 3 steps of 2 atoms; step 0 labelled
    arrays = {"labelled": np.array([True, False, False])}
    s = np.full((3, 2, 3), 0.02)  # |u_a| = 0.02 sqrt(3) = 0.0346
    e = np.zeros((3, 2, 3))
    e[0, 0] = [1.0, 0.0, 0.0]  # labelled: no miss
    e[1, 1] = [0.07, 0.07, 0.07]  # |e| = 0.121: 3.5 std vectors, a miss
    e[2, 0] = [0.1, 0.0, 0.0]  # |e| = 0.1: 2.89 std vectors (each component 5), none
    got = bench_otf.atom_misses(
        arrays, {"step": np.array([0, 1, 500]), "error": e, "std": s}
    )
    assert got["atom_misses"] == 1 and got["atom_misses_before_400"] == 1
    assert got["atom_misses_after_400"] == 0
    assert got["atom_max_z_unlabelled"] == pytest.approx(3.5)
