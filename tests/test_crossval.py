"""K-fold cross-validation (gapfit.crossval): folds, fold models against refits
without each fold, and the calibration on cross-validated predictions (API, CLI)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from emt_cells import SOAP, cu_cells
from test_cli import invoke

from gapfit import GAP, GapfitError
from gapfit.crossval import calibrate_cv, cross_validated, fold_models, folds
from gapfit.data import as_frames
from gapfit.model import Model
from gapfit.uncertainty import uncertainty_table
from gapfit.update import refit

K = 3


def _isolated() -> Atoms:
    atoms = Atoms("Cu", cell=[20.0] * 3, pbc=False)
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((1, 3)))
    atoms.info["config_type"] = "isolated_atom"
    return atoms


@pytest.fixture(scope="module")
def training():
    """Six rattled cells and an isolated atom (e0), as Frames."""
    return as_frames([_isolated()] + cu_cells(6, seed=11), require=())


@pytest.fixture(scope="module")
def fitted(training):
    return GAP(soap=SOAP, e0_method="isolated", chunk_atoms=64).fit(training).model_


def test_folds_deal_every_configuration_once(training):
    parts = folds(training, K, seed=2)
    dealt = np.sort(np.concatenate(parts))
    assert dealt.tolist() == list(range(1, len(training)))  # not the isolated atom
    assert {len(p) for p in parts} == {2}
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, folds(training, K, 2), strict=True)
    )
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(parts, folds(training, K, 3), strict=True)
    )
    for k in (1, 7):
        with pytest.raises(GapfitError, match="lower --cv"):
            folds(training, k, seed=0)


def test_fold_models_equal_refits_without_the_fold(fitted, training):
    """One pass and a QR per fold = the fit's own solve on the other folds' frames
    (and the isolated atom), same sparse set."""
    parts = folds(training, K, seed=0)
    w_all = np.asarray(fitted.posterior.weights)
    for part, model in zip(parts, fold_models(fitted, training, parts), strict=True):
        rest = [f for i, f in enumerate(training) if i not in set(part.tolist())]
        want = np.asarray(refit(fitted, rest).posterior.weights)
        got = np.asarray(model.posterior.weights)
        assert np.abs(got - want).max() <= 1e-8 * np.abs(want).max()
        assert np.abs(got - w_all).max() > 1e-4 * np.abs(w_all).max()  # fold mattered


def test_cross_validated_predictions_come_from_the_fold_models(fitted, training):
    held, preds = cross_validated(fitted, training, K, seed=0)
    assert [f.where for f in held] == [f.where for f in training[1:]]
    parts = folds(training, K, seed=0)
    models = fold_models(fitted, training, parts)
    j = next(j for j, p in enumerate(parts) if 1 in p)  # the first cell's fold
    want = models[j].predict([training[1]], std=True)[0]
    for key in ("energy", "forces", "forces_std", "virial_std"):
        assert np.allclose(preds[0][key], want[key], rtol=1e-10, atol=1e-12), key
    # not the full model's: that one saw the cell, so its errors are smaller
    own = fitted.predict([training[1]])[0]
    e_cv = np.abs(preds[0]["forces"] - training[1].forces).max()
    e_own = np.abs(own["forces"] - training[1].forces).max()
    assert e_cv > e_own


def test_calibrate_cv_fits_the_cross_validated_errors(fitted, training):
    result = calibrate_cv(fitted, training, K, seed=0)
    cal = result.model.calibration
    assert "cross-validation" in cal.data["held_out"]
    assert cal.data["n_configs"] == len(training) - 1
    assert set(cal.quantities) >= {"forces", "virial"}
    table = uncertainty_table(result.samples)
    for q in cal.quantities:  # the maximum-likelihood map beats the DTC stds
        assert table[q]["calibrated"]["nll"] <= table[q]["DTC"]["nll"], q
    # its force errors are the cross-validated ones
    held, preds = cross_validated(fitted, training, K, seed=0)
    e = np.concatenate(
        [p["forces"] - f.forces for f, p in zip(held, preds, strict=True)]
    )
    assert table["forces"]["DTC"]["rmse"] == pytest.approx(
        1e3 * np.sqrt(np.mean(e**2)), rel=1e-9
    )
    assert result.model.posterior is fitted.posterior  # the model itself unchanged


def test_cli_calibrate_cv(tmp_path):
    images = [_isolated()] + cu_cells(6, seed=11)
    ase.io.write(tmp_path / "train.xyz", images)
    result = invoke(
        "fit",
        "--at-file",
        tmp_path / "train.xyz",
        "--gp-file",
        tmp_path / "model.npz",
        "--soap",
        SOAP,
        "--quiet",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    out = tmp_path / "cv.npz"
    args = ["calibrate", "--gp-file", tmp_path / "model.npz", "--output", out]
    result = invoke(*args, "--cv", K, tmp_path / "train.xyz")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"{K}-fold cross-validation" in result.output
    assert f"train.xyz, {K}-fold cross-validated" in result.output  # the table's title
    assert "forces scale " in result.output
    assert "cross-validation" in Model.load(out).calibration.data["held_out"]
    # other data than the model's training set: an error saying what to do
    ase.io.write(tmp_path / "other.xyz", images[:1] + cu_cells(3, seed=12))
    result = invoke(*args, "--cv", K, tmp_path / "other.xyz")
    assert result.exit_code != 0 and "training data" in result.output, result.output
    # a held-out file without --cv still calibrates as before
    result = invoke(*args, tmp_path / "other.xyz")
    assert result.exit_code == 0, (result.output, result.exception)
