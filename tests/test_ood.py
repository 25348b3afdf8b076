"""Per-configuration scores and the leave-out split of benchmarks/bench_ood.py."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from gapfit.data import frames_from_atoms

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_ood():
    sys.path.insert(0, str(BENCHMARKS))  # bench_ood imports bench_fit by bare name
    try:
        yield importlib.import_module("bench_ood")
    finally:
        sys.path.remove(str(BENCHMARKS))


def labelled(config_type: str, forces: np.ndarray) -> Atoms:
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    atoms.info.update(config_type=config_type, energy=-1.0)
    atoms.arrays["forces"] = forces
    return atoms


def test_scores_are_largest_per_atom_norms(bench_ood):
    f_ref = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    (frame,) = frames_from_atoms([labelled("bulk", f_ref)])
    # atom 0: component stds (3, 4, 0) -> norm 5; atom 1: (1, 1, 1) -> sqrt 3.
    # The largest single component (4) or the sum of stds (7 + 3) would differ.
    pred = {
        "forces": np.array([[0.1, 0.0, 0.0], [0.0, -0.6, 0.8]]),  # |e| 0.1 and 1
        "forces_std": np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]]),
    }
    s = bench_ood.config_scores([frame], [pred])
    assert set(s) == {"DTC std", "force error"}
    np.testing.assert_allclose(s["DTC std"], [5.0], rtol=1e-15)
    np.testing.assert_allclose(s["force error"], [1.0], rtol=1e-15)
    # a calibrated prediction: the DTC std is the *_raw one, the calibrated its own
    cal = {**pred, "forces_std_raw": pred["forces_std"], "forces_std": 2 * f_ref + 0.5}
    s = bench_ood.config_scores([frame], [cal])
    np.testing.assert_allclose(s["DTC std"], [5.0], rtol=1e-15)
    np.testing.assert_allclose(s["calibrated std"], [np.sqrt(0.75)], rtol=1e-15)


def test_leave_out_split_keeps_isolated_atom(bench_ood):
    zero = np.zeros((2, 3))
    types = ["isolated_atom", "surface", "bulk", "surface", "md"]
    frames = frames_from_atoms([labelled(t, zero) for t in types])
    kept, out = bench_ood.leave_out_split(frames, ["surface"])
    assert kept == [0, 2, 4] and out == [1, 3]
    kept, out = bench_ood.leave_out_split(frames, ["surface", "md"])
    assert kept == [0, 2] and out == [1, 3, 4]
    with pytest.raises(SystemExit, match="isolated atom"):
        bench_ood.leave_out_split(frames, ["isolated_atom"])
    with pytest.raises(SystemExit, match="no config of config_type vacancy"):
        bench_ood.check_present(frames, ["vacancy"], "train.xyz")
