"""Held-out predictions of labelled frames, and the std calibration they give.

An active-learning loop predicts every frame it labels just before labelling it: that
prediction is held out (the model was not fitted on the frame). The loop stores it with
the labelled frame, as extxyz fields of ``labelled.xyz`` (so that it survives a resume
and a user can read it):

    gap_energy, gap_energy_std     info, eV
    gap_stress, gap_stress_std     info, (6,) eV/Å³ Voigt (periodic cells)
    gap_forces, gap_forces_std     arrays, (N, 3) eV/Å
    gap_n_labels                   info: labels of the model that predicted it
    gap_std_units                  info: the loop's std unit then (see below)

The stds are the DTC ones. A re-optimisation of delta changes their amplitude; the loop
multiplies its running ``std_units`` by the ratio of the new to the old stds, and a
stored std ``s`` is ``s * units_now / units_then`` in the current model's units.

``calibration`` fits ``gapfit.calibration``'s map (``s_cal^2 = (a s)^2 + b^2 w +
(c y)^2`` per quantity, maximum likelihood) to these held-out errors, leaving out the
frames predicted by models of fewer than ``min_labels`` labels (a model of one or two
frames says little of the errors of the later ones). The frames were chosen for their
large stds, so the map rests on the loop's most uncertain frames, not on a random
sample of the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ase
import numpy as np

from gapfit.calibration import MIN_CONFIGS, Calibration, fit_calibration, summary
from gapfit.data import Frame
from gapfit.model import full_tensor
from gapfit.uncertainty import collect

FIELDS = ("energy", "stress", "forces")  # calculator results stored with their stds


def record(atoms: ase.Atoms, results: dict, n_labels: int, units: float) -> None:
    """Store a calculator's ``results`` (with ``*_std``) for ``atoms``, predicted by
    a model of ``n_labels`` labels while the loop's std unit was ``units``."""
    for key in FIELDS:
        for name in (key, key + "_std"):
            if name not in results:
                continue
            value = np.array(results[name], dtype=float)
            if key == "forces":
                atoms.arrays["gap_" + name] = value
            else:
                atoms.info["gap_" + name] = float(value) if value.ndim == 0 else value
    atoms.info["gap_n_labels"] = int(n_labels)
    atoms.info["gap_std_units"] = float(units)


def prediction(atoms: ase.Atoms, units: float) -> dict | None:
    """The stored prediction of ``atoms`` as a ``Model.predict`` result (energy,
    forces, virial (3, 3) and their stds, in the current ``units``), or None if it
    has none."""
    info = atoms.info
    if "gap_forces_std" not in atoms.arrays or "gap_energy_std" not in info:
        return None
    factor = units / float(info["gap_std_units"])
    out = {
        "energy": float(info["gap_energy"]),
        "energy_std": factor * float(info["gap_energy_std"]),
        "forces": np.asarray(atoms.arrays["gap_forces"]),
        "forces_std": factor * np.asarray(atoms.arrays["gap_forces_std"]),
    }
    if "gap_stress_std" in info and atoms.cell.rank == 3:
        volume = atoms.get_volume()
        out["virial"] = -volume * full_tensor(info["gap_stress"])
        out["virial_std"] = factor * volume * full_tensor(info["gap_stress_std"])
    else:  # no stress: collect needs the keys; frames without a virial skip them
        out["virial"] = out["virial_std"] = np.zeros((3, 3))
    return out


def calibration(
    labelled: Sequence[ase.Atoms],
    frames: Sequence[Frame],
    units: float,
    min_labels: int,
) -> Calibration | None:
    """The calibration fitted to the held-out predictions stored with ``labelled``
    (``frames`` are the same frames as ``Frame``s), leaving out those predicted by
    models of fewer than ``min_labels`` labels; None with fewer than
    ``calibration.MIN_CONFIGS`` such frames."""
    used, preds = [], []
    for atoms, frame in zip(labelled, frames, strict=True):
        pred = prediction(atoms, units)
        if pred is not None and int(atoms.info["gap_n_labels"]) >= min_labels:
            if frame.virial is not None and not pred["virial_std"].any():
                frame = dataclasses.replace(frame, virial=None)  # none held out
            used.append(frame)
            preds.append(pred)
    if len(used) < MIN_CONFIGS:
        return None
    data = summary(used) | {
        "held_out": "active learning: each frame as predicted just before its label"
    }
    return fit_calibration(collect(used, preds), data=data)
