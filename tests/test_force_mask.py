"""gap_fit's force mask (force_mask_parameter_name): atoms marked T have forces that
are neither fitted nor scored."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner
from emt_cells import SOAP, cu_cells

from gapfit import GAP
from gapfit.cli import main
from gapfit.data import LabelKeys, read_frames
from gapfit.errors import GapfitError

MASKED = [0, 1, 2, 3]  # atoms of every cell whose forces are not labels


def masked_file(path: Path, garbage: bool) -> Path:
    """EMT cells with a force mask on MASKED; their forces garbage if asked."""
    cells = cu_cells(6, seed=31)
    for atoms in cells:
        forces = atoms.get_forces().copy()
        if garbage:
            forces[MASKED] = 100.0
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=atoms.get_potential_energy(),
            forces=forces,
            stress=atoms.get_stress(),
        )
        mask = np.zeros(len(atoms), bool)
        mask[MASKED] = True
        atoms.arrays["force_mask"] = mask
    ase.io.write(path, cells)
    return path


@pytest.mark.parametrize("optimise", [False, True])
def test_masked_forces_change_nothing(tmp_path: Path, optimise: bool) -> None:
    """Masked forces that are garbage give the same model as true ones (the
    evidence's noise groups too), and the error tables leave them out."""
    good = masked_file(tmp_path / "good.xyz", garbage=False)
    bad = masked_file(tmp_path / "bad.xyz", garbage=True)
    kw = {"soap": SOAP, "e0_method": "average", "optimise_hyperparameters": optimise}
    a, b = GAP(**kw).fit(good), GAP(**kw).fit(bad)
    w_a, w_b = (np.asarray(g.model_.posterior.weights) for g in (a, b))
    assert np.abs(w_a - w_b).max() <= 1e-10 * np.abs(w_a).max()
    assert a.training_errors_ == b.training_errors_
    n_fitted = 6 * 3 * (32 - len(MASKED))
    assert a.training_errors_["all"]["forces"]["n"] == n_fitted
    assert a.model_.info["data"]["n_force_components"] == n_fitted
    if not optimise:  # without the mask the garbage is fitted
        blind = GAP(**kw, keys=LabelKeys(force_mask="none")).fit(bad)
        w_c = np.asarray(blind.model_.posterior.weights)
        assert np.abs(w_c - w_a).max() > 1e-3 * np.abs(w_a).max()


def test_force_mask_option_and_bad_masks(tmp_path: Path) -> None:
    bad = masked_file(tmp_path / "bad.xyz", garbage=True)
    frames = read_frames(bad)
    assert frames[0].force_mask.tolist()[:5] == [True] * 4 + [False]
    np.testing.assert_array_equal(frames[0].fitted_atoms(), np.arange(4, 32))
    ignored = read_frames(bad, keys=LabelKeys(force_mask="none"))
    assert ignored[0].force_mask is None  # another name: the mask is not read
    atoms = ase.io.read(bad)
    atoms.arrays["force_mask"] = np.zeros(len(atoms))  # numbers, not logicals
    ase.io.write(tmp_path / "odd.xyz", atoms)
    with pytest.raises(GapfitError, match="expected one logical"):
        read_frames(tmp_path / "odd.xyz")
    out = tmp_path / "m.npz"
    result = CliRunner().invoke(
        main,
        [
            "fit",
            f"at_file={bad}",
            f"gp_file={out}",
            "gap={soap cutoff=4.0 n_max=3 l_max=2 n_sparse=10}",
            "e0_method=average",
            "force_mask_parameter_name=force_mask",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{6 * 3 * 28}" in result.output  # force components fitted
