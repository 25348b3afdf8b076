"""The shipped potentials (``potentials/<name>/``, built by ``potentials/build.py``).

Each model file loads, is calibrated, holds its learned hyperparameters, and
reproduces on ``check.xyz`` (a few test configurations with their reference labels)
the figures its ``card.json`` states. The errors here are recomputed with numpy from
the predictions and the labels, not with ``gapfit.report`` as the build does, and
must also stay within 3x the card's RMSE on the whole test set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from gapfit import Model
from gapfit.data import LabelKeys, read_frames

POTENTIALS = Path(__file__).resolve().parents[1] / "potentials"
SHIPPED = ("cu_emt", "si_zuo2020")  # the potentials the project promises
FILES = ("model.npz", "card.json", "check.xyz", "README.md")


def test_every_potential_is_shipped() -> None:
    for name in SHIPPED:
        for file in FILES:
            assert (POTENTIALS / name / file).is_file(), f"{name}/{file}"
        assert f"({name}/README.md)" in (POTENTIALS / "README.md").read_text()


def rms(x: list[np.ndarray]) -> float:
    """Root mean square of all values of the arrays, times 1e3 (eV -> meV)."""
    return 1e3 * float(np.sqrt(np.mean(np.concatenate([np.ravel(a) for a in x]) ** 2)))


@pytest.mark.parametrize("name", SHIPPED)
def test_model_reproduces_its_card(name: str) -> None:
    folder = POTENTIALS / name
    card = json.loads((folder / "card.json").read_text())
    model_bytes = (folder / "model.npz").read_bytes()
    assert hashlib.sha256(model_bytes).hexdigest() == card["model"]["sha256"]
    model = Model.load(folder / "model.npz")

    # calibrated, with hyperparameters chosen by the evidence and used by the model
    assert model.calibration is not None
    assert set(model.calibration.quantities) >= {"energy", "forces"}
    hyper = model.info["hyperparameters"]
    assert hyper == card["hyperparameters"]
    assert hyper["final"]["log_evidence"] > hyper["initial"]["log_evidence"]
    for term in model.terms:
        assert term.kernel.delta == pytest.approx(hyper["final"]["delta"][term.name])
    assert model.info["settings"]["default_sigma"] == hyper["final"]["default_sigma"]

    check = card["check"]
    keys = LabelKeys(**check["label_keys"])  # labels the model was fitted on
    frames = read_frames(folder / "check.xyz", keys, require=("energy", "forces"))
    assert [len(f.numbers) for f in frames] == check["n_atoms"]
    preds = model.predict(frames, std=True)
    n = [len(f.numbers) for f in frames]
    pairs = list(zip(frames, preds, n, strict=True))
    rmse = {
        "energy": rms([(p["energy"] - f.energy) / k for f, p, k in pairs]),
        "forces": rms([p["forces"] - f.forces for f, p, _ in pairs]),
    }
    std = {
        "energy": rms([p["energy_std"] / k for _, p, k in pairs]),
        "forces": rms([p["forces_std"] for _, p, _ in pairs]),
    }
    if any(f.virial is not None for f in frames):
        with_virial = [(f, p, k) for f, p, k in pairs if f.virial is not None]
        rmse["virial"] = rms([(p["virial"] - f.virial) / k for f, p, k in with_virial])
        std["virial"] = rms([p["virial_std"] / k for _, p, k in with_virial])
    assert set(rmse) == set(check["rmse"]) == set(check["std_rms"])
    test_rmse = card["test"]["errors"]["all"]
    # meV/atom and meV/Å: a 1e-3 floor is 1e-6 eV, the float64 rounding of kernel sums
    # that cancel (2-body delta 100 eV) when a compiler orders them differently
    for q in rmse:
        assert rmse[q] == pytest.approx(check["rmse"][q], rel=1e-6, abs=1e-3), q
        assert std[q] == pytest.approx(check["std_rms"][q], rel=1e-6, abs=1e-3), q
        assert rmse[q] <= 3 * test_rmse[q]["rmse"], (q, rmse[q], test_rmse[q])
    for p in preds:  # the stds are the calibrated ones, the DTC ones kept beside
        for key in ("energy_std", "forces_std"):
            assert np.all(np.isfinite(p[key]) & (np.asarray(p[key]) > 0)), key
            assert np.all(p[key] != p[f"{key}_raw"]), key
