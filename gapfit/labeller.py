"""Labellers: any ASE calculator computes the reference energies, forces and stresses.

Named on the command line as ``emt`` (``ase.calculators.emt.EMT``), ``lj``
(``ase.calculators.lj.LennardJones``), ``zbl`` (``gapfit.zbl.ZBL``, for baselines) or
``module:Class`` with JSON keyword arguments (``tblite.ase:TBLite`` with
``{"method": "GFN1-xTB"}``), or passed as a calculator object in Python. ``label``
runs it on a fresh copy of a structure and returns the labelled copy, or a
``LabelFailure`` with the reason: any exception of the calculator, a non-finite
result, a warning about convergence (calculators that do not raise on an unconverged
SCF), or data that ``gapfit.data`` rejects (e.g. overlapping atoms). A failure is
never raised, so one bad structure cannot stop an active-learning loop.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import ase
import numpy as np
from ase.calculators.calculator import BaseCalculator
from ase.calculators.singlepoint import SinglePointCalculator

from gapfit.data import LabelKeys, frames_from_atoms
from gapfit.errors import GapfitError

SHORT_NAMES = {
    "emt": "ase.calculators.emt:EMT",
    "lj": "ase.calculators.lj:LennardJones",
    "zbl": "gapfit.zbl:ZBL",  # a core repulsion, for baselines
}
NAMES_FOR = {"--baseline": "zbl, lj, emt"}  # short names an error suggests
_CONVERGENCE = re.compile(r"converge", re.IGNORECASE)
_BUILT: dict[tuple[str, int], BaseCalculator] = {}  # named calculators, per thread


@dataclass(frozen=True)
class LabelFailure:
    """Why a structure got no label (exception type and message, or the check)."""

    reason: str


def make_labeller(
    spec: str | BaseCalculator,
    kwargs: str | dict[str, Any] | None = None,
    option: str = "--labeller",
) -> BaseCalculator:
    """An ASE calculator from ``emt``, ``lj`` or ``module:Class`` and keyword
    arguments (a dict or JSON text); a calculator object is returned as it is.
    ``option`` names the setting in error messages (``--baseline`` for a baseline).

    Raises:
        GapfitError: unknown name, module or class, bad JSON, or a constructor that
            fails with these arguments.
    """
    if isinstance(spec, BaseCalculator):
        return spec
    kwargs = parse_kwargs(kwargs, option)
    target = SHORT_NAMES.get(str(spec).lower(), str(spec))
    module_name, _, attr = target.partition(":")
    if not attr:
        raise GapfitError(
            f"{option} {spec!r}: use {NAMES_FOR.get(option, 'emt, lj')} or "
            "module:Class (an ASE calculator class, e.g. tblite.ase:TBLite)."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise GapfitError(
            f"{option} {spec!r}: cannot import {module_name!r} ({err}); install it "
            "or fix the module name."
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise GapfitError(
                f"{option} {spec!r}: module {module_name!r} has no {attr!r}."
            )
        obj = getattr(obj, part)
    try:
        calc = obj(**(kwargs or {}))
    except Exception as err:  # any constructor error is the user's settings
        raise GapfitError(
            f"{option} {spec!r} with arguments {kwargs or {}} failed: "
            f"{type(err).__name__}: {err}"
        ) from None
    if not isinstance(calc, BaseCalculator):
        raise GapfitError(
            f"{option} {spec!r} made a {type(calc).__name__}, not an ASE calculator."
        )
    return calc


def named_calculator(
    spec: str, kwargs: dict[str, Any] | None, option: str = "--labeller"
) -> BaseCalculator:
    """``make_labeller(spec, kwargs, option)``, built once per thread of this
    process and reused (calculators keep state between calls, so threads never share
    one)."""
    key = (json.dumps([spec, kwargs], sort_keys=True), threading.get_ident())
    if key not in _BUILT:
        _BUILT[key] = make_labeller(spec, kwargs, option)
    return _BUILT[key]


def parse_kwargs(
    kwargs: str | dict[str, Any] | None, option: str = "--labeller"
) -> dict[str, Any] | None:
    """Keyword arguments of a labeller (or of the calculator ``option`` names) from
    JSON text or a dict (None stays None).

    Raises:
        GapfitError: not JSON, or not an object.
    """
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as err:
            raise GapfitError(
                f"{option}-kwargs {kwargs!r} is not JSON ({err}); write e.g. "
                '\'{"method": "GFN1-xTB"}\'.'
            ) from None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise GapfitError(
            f"{option}-kwargs must be a JSON object (keyword arguments), got "
            f"{kwargs!r}."
        )
    return kwargs


def label(calc: BaseCalculator, atoms: ase.Atoms) -> ase.Atoms | LabelFailure:
    """Energy (eV), forces (eV/Å) and, for 3D-periodic cells when the calculator has
    it, stress (eV/Å³) of a copy of ``atoms``, held by a ``SinglePointCalculator``;
    ``info["config_type"]`` is kept. Returns a ``LabelFailure`` instead of raising."""
    copy = ase.Atoms(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
    )
    if "config_type" in atoms.info:
        copy.info["config_type"] = atoms.info["config_type"]
    stress = bool(copy.pbc.all()) and "stress" in calc.implemented_properties
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if hasattr(calc, "reset"):
                calc.reset()  # no results of an earlier (maybe failed) structure
            copy.calc = calc
            results = {
                "energy": float(copy.get_potential_energy()),
                "forces": copy.get_forces(),
            }
            if stress:
                results["stress"] = copy.get_stress()
    except Exception as err:  # the labeller may raise anything; never stop the loop
        return LabelFailure(f"{type(err).__name__}: {err}".strip())
    finally:
        copy.calc = None
    unconverged = [
        str(w.message) for w in caught if _CONVERGENCE.search(str(w.message))
    ]
    if unconverged:
        return LabelFailure(f"not converged: {unconverged[0]}")
    bad = [k for k, v in results.items() if not np.all(np.isfinite(v))]
    if bad:
        return LabelFailure(f"non-finite {', '.join(bad)}")
    copy.calc = SinglePointCalculator(
        copy, **{k: np.array(v, dtype=float) for k, v in results.items()}
    )
    try:
        frames_from_atoms([copy], LabelKeys(), require=("energy", "forces"))
    except GapfitError as err:
        return LabelFailure(f"rejected: {err}")
    return copy
