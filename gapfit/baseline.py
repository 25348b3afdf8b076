"""A baseline potential under the GP (gap_fit's ``core_ip_args``): the GAP learns the
labels minus the baseline's energy, forces and virial, and its predictions add them
back.

The baseline is any ASE calculator named as a labeller is (``zbl``, ``lj``, ``emt``
or ``module:Class`` with JSON keyword arguments, ``gapfit.labeller``), so the model
file holds its name and arguments and builds it again where the model is used;
nothing is pickled. Typical uses: a repulsion for close approaches (``zbl``,
``gapfit.zbl``), a physical model whose error the GP corrects (Δ-learning: tight
binding under DFT labels), or gap_fit's own core potential through
``quippy.potential:Potential``. The baseline has
no uncertainty: the stds are the GP's.

Labels meet the baseline in one place, ``assembly.scaled_rows`` (with e0 fitted to
the residual energies), so a fit, an update, a refit, cross-validation and the
evidence all see the same targets; ``Model.unpack`` adds the baseline to every
prediction. Values are cached by geometry (``CACHE_ATOMS`` atoms at most, least
recently used first out), so a refit does not label its frames again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import ase
import numpy as np
from ase.calculators.calculator import BaseCalculator

from gapfit.data import Frame
from gapfit.errors import GapfitError
from gapfit.labeller import named_calculator, parse_kwargs

CACHE_ATOMS = 1_000_000  # atoms whose baseline values are kept (~40 MB)
_CACHE: OrderedDict[tuple[str, bytes], Values] = OrderedDict()
_CACHED_ATOMS = [0]
_LOCK = threading.Lock()


class Values(NamedTuple):
    """The baseline's results for one structure."""

    energy: float  # eV
    energies: np.ndarray | None  # (n,) eV, None if the calculator has no per-atom
    forces: np.ndarray  # (n, 3) eV/Å
    virial: np.ndarray | None  # (3, 3) eV; None: the calculator gives no stress


@dataclass(frozen=True)
class Baseline:
    """An ASE calculator by name (``zbl``, ``lj``, ``emt``, ``module:Class``) and
    keyword arguments (JSON-able), evaluated on every training and predicted
    structure."""

    calculator: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, calculator: Any, kwargs: str | dict[str, Any] | None = None
    ) -> Baseline | None:
        """The baseline of ``GAP(baseline=..., baseline_kwargs=...)`` (None: none),
        built once here so that a bad name or argument fails before any work.

        Raises:
            GapfitError: a calculator object (a model file can only name one), an
                unknown name or class, bad arguments, or a calculator without
                energy and forces.
        """
        if calculator is None:
            if kwargs:
                raise GapfitError(
                    "--baseline-kwargs without --baseline: name the baseline "
                    "calculator too (e.g. --baseline lj)."
                )
            return None
        if not isinstance(calculator, str):
            raise GapfitError(
                f"baseline={type(calculator).__name__}(...): a model file names its "
                "baseline, so give it as 'module:Class' (or emt, lj, zbl) with "
                "baseline_kwargs, e.g. baseline='ase.calculators.lj:LennardJones', "
                "baseline_kwargs={'sigma': 2.3, 'epsilon': 0.4, 'rc': 6.0}."
            )
        base = cls(calculator, parse_kwargs(kwargs, "--baseline") or {})
        calc = base._calculator()
        missing = {"energy", "forces"} - set(calc.implemented_properties)
        if missing:
            lacks = ", ".join(sorted(missing))
            raise GapfitError(
                f"--baseline {calculator!r} does not compute {lacks}; a baseline "
                "must give energies and forces (and stress to fit or predict virials)."
            )
        return base

    def _calculator(self) -> BaseCalculator:
        """The calculator, built once per thread."""
        return named_calculator(self.calculator, self.kwargs or None, "--baseline")

    @property
    def _key(self) -> str:
        return repr((self.calculator, sorted(self.kwargs.items())))

    def values(self, structure: Frame | ase.Atoms, where: str = "") -> Values:
        """Energy, per-atom energies, forces and virial of ``structure`` (cached by
        its numbers, positions, cell and pbc); ``where`` names it in errors.

        The virial is ``-stress V`` from the calculator for a periodic cell and
        ``-sum_i r_i (x) F_i`` (its strain derivative) for a finite one; None for a
        periodic cell when the calculator has no stress (predictions then have no
        virial or stress).

        Raises:
            GapfitError: the calculator fails or gives non-finite values.
        """
        numbers = np.asarray(structure.numbers)
        positions = np.asarray(structure.positions, dtype=float)
        cell = np.asarray(structure.cell, dtype=float)
        pbc = np.asarray(structure.pbc, dtype=bool)
        digest = hashlib.sha1()
        for a in (numbers.astype(np.int64), positions, cell, pbc):
            digest.update(np.ascontiguousarray(a).tobytes())
        key = (self._key, digest.digest())
        with _LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        found = self._evaluate(numbers, positions, cell, pbc, where)
        with _LOCK:
            if key not in _CACHE:  # another thread may have stored it meanwhile
                _CACHED_ATOMS[0] += len(numbers)
            _CACHE[key] = found
            while _CACHED_ATOMS[0] > CACHE_ATOMS and len(_CACHE) > 1:
                _, old = _CACHE.popitem(last=False)
                _CACHED_ATOMS[0] -= len(old.forces)
        return found

    def _evaluate(self, numbers, positions, cell, pbc, where: str) -> Values:
        atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        calc = self._calculator()
        props = set(calc.implemented_properties)
        what = f"the baseline {self.calculator!r} on {where or 'a structure'}"
        try:
            if hasattr(calc, "reset"):
                calc.reset()
            atoms.calc = calc
            energy = float(atoms.get_potential_energy())
            forces = np.array(atoms.get_forces(), dtype=float)
            energies = (
                np.array(atoms.get_potential_energies(), dtype=float)
                if "energies" in props
                else None
            )
            virial = None
            if not pbc.any():
                virial = -positions.T @ forces
                virial = 0.5 * (virial + virial.T)
            elif "stress" in props:
                stress = atoms.get_stress(voigt=False)
                virial = -np.asarray(stress, dtype=float) * abs(np.linalg.det(cell))
        except Exception as err:  # any failure of the user's calculator
            raise GapfitError(
                f"{what} failed: {type(err).__name__}: {err}; check the baseline's "
                "settings for this structure."
            ) from None
        finally:
            atoms.calc = None
        results = (energy, energies, forces, virial)
        if not all(x is None or np.all(np.isfinite(x)) for x in results):
            raise GapfitError(f"{what} gave non-finite values; check its settings.")
        return Values(energy, energies, forces, virial)

    def residual(self, frames: Sequence[Frame]) -> list[Frame]:
        """``frames`` with their labels minus the baseline's values (what the GP
        learns).

        Raises:
            GapfitError: a virial label where the calculator gives no stress.
        """
        out = []
        for f in frames:
            v = self.values(f, f.where)
            if f.virial is not None and v.virial is None:
                raise GapfitError(
                    f"{f.where}: has a virial, but the baseline {self.calculator!r} "
                    "computes no stress; drop the virials (e.g. "
                    "--virial-parameter-name none --stress-parameter-name none) or "
                    "choose a baseline with stress."
                )
            change = {
                "energy": None if f.energy is None else f.energy - v.energy,
                "forces": None if f.forces is None else _frozen(f.forces - v.forces),
                "virial": None if f.virial is None else _frozen(f.virial - v.virial),
            }
            out.append(dataclasses.replace(f, **change))
        return out

    def meta(self) -> dict:
        """The model file's description of the baseline."""
        return {"calculator": self.calculator, "kwargs": self.kwargs}

    @classmethod
    def from_meta(cls, meta: Any, where: str) -> Baseline:
        """The baseline a model file describes (not built until it is used, so a
        model can be inspected where its calculator is not installed)."""
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("calculator"), str)
            and isinstance(meta.get("kwargs"), dict)
        ):
            raise GapfitError(f"{where}: corrupt baseline description; refit.")
        return cls(meta["calculator"], meta["kwargs"])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
