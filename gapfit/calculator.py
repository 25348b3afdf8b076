"""ASE calculator of a fitted GAP, with posterior standard deviations.

``GAPCalculator("model.npz")`` gives ASE's usual results in ASE units: ``energy`` and
``free_energy`` (eV; identical, no electronic entropy), ``energies`` (n_atoms,) eV local
energies including e0 (and the baseline's, if the model has one that computes them;
else absent), ``forces`` (n_atoms, 3) eV/Å and, for 3D-periodic cells only,
``stress`` (6,) eV/Å³ in Voigt order (xx, yy, zz, yz, xz, xy), ASE's sign. With
``std=True`` (the default) it also stores ``energy_std`` (eV), ``energies_std``
(n_atoms,) eV, ``forces_std`` (n_atoms, 3) eV/Å and ``stress_std`` (6,) eV/Å³: the DTC
predictive standard deviations of the latent function (Quiñonero-Candela & Rasmussen,
JMLR 6, 1939 (2005)), no observation noise added, or for a model calibrated with
``gapfit calibrate`` the calibrated stds, with the DTC ones as ``energy_std_raw``,
``energies_std_raw``, ``forces_std_raw`` and ``stress_std_raw``; with ``std="energy"``
only the two energy stds, at about twice the mean's cost. They are read from
``calc.results`` after a calculation (ASE's ``get_property`` only serves
``implemented_properties``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ase
from ase.calculators.calculator import Calculator, all_changes

from gapfit.model import Model, std_mode

STD_RESULTS = ("energy_std", "energies_std", "forces_std", "stress_std")
# DTC stds of a calibrated model (its *_std are then calibrated: gapfit.calibration)
RAW_STD_RESULTS = tuple(key + "_raw" for key in STD_RESULTS)


class GAPCalculator(Calculator):
    """ASE calculator for a fitted ``Model`` (or the path of a saved one).

    Args:
        model: a ``Model`` or the path of a model file written by ``Model.save``.
        std: also compute the ``*_std`` results: True (or "all") every one (costs
            about 20–25 times the mean), "energy" ``energy_std`` and ``energies_std``
            only (the local energies' stds, as gap_fit's ``local_gap_variance``;
            about twice the mean), False none.
        **kwargs: passed to ``ase.calculators.calculator.Calculator``.

    Results (after ``atoms.get_potential_energy()`` etc.):
        energy, free_energy: eV. energies: (n_atoms,) eV. forces: (n_atoms, 3) eV/Å.
        stress: (6,) eV/Å³ Voigt, only if ``atoms.pbc.all()`` (otherwise ASE raises
        ``PropertyNotImplementedError`` on ``get_stress``). With ``std``:
        energy_std eV, energies_std (n_atoms,) eV, forces_std (n_atoms, 3) eV/Å,
        stress_std (6,) eV/Å³ (periodic cells only); calibrated if the model is, the
        DTC ones then as ``*_std_raw``.

    Raises:
        GapfitError: the model file is missing or invalid, or the atoms contain an
            element the model was not fitted on.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict[str, Any] = {"std": True}
    nolabel = True

    def __init__(
        self, model: Model | str | os.PathLike, std: bool | str = True, **kwargs: Any
    ) -> None:
        std_mode(std)  # a bad mode fails here, not at the first calculation
        super().__init__(std=std, **kwargs)
        self.model = model if isinstance(model, Model) else Model.load(model)

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Predict the mean (and std) of every result for ``atoms`` in one pass."""
        super().calculate(atoms, properties, system_changes)
        where = f"atoms {self.atoms.get_chemical_formula()}"
        # unknown species raise a GapfitError naming them (neighbours.species_index)
        (pred,) = self.model.predict(
            [self.atoms], std=self.parameters.std, wheres=[where]
        )
        self.results["energy"] = pred["energy"]
        self.results["free_energy"] = pred["energy"]
        self.results["forces"] = pred["forces"]
        if "energies" in pred:  # absent under a baseline without per-atom energies
            self.results["energies"] = pred["energies"]
        if "stress" in pred:  # 3D-periodic only; left out so ASE raises otherwise
            self.results["stress"] = pred["stress"]
        for key in STD_RESULTS + RAW_STD_RESULTS:
            if key in pred:
                self.results[key] = pred[key]
