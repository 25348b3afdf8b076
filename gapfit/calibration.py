"""Calibration of the predicted standard deviations on labelled held-out data.

The DTC std ``s`` of a model (``gapfit.sparse_gp``) is that of the latent energy
surface: it has no observation noise, and its size follows the prior amplitude
``delta``, which is set by hand, not fitted. One map per quantity (energy, force
components, virial components) repairs it::

    s_cal^2 = a^2 s^2 + b^2 w + c^2 y^2

with ``y`` the predicted value (``c = 0`` for energies, whose zero is arbitrary).
``a^2 s^2 + b^2`` is the predictive variance of a noisy target ``y = f + noise`` under
a GP with its signal variance rescaled by ``a^2`` and a noise variance ``b^2``
(Rasmussen & Williams, *Gaussian Processes for Machine Learning*, MIT Press 2006,
eq. 2.24): ``a`` corrects the amplitude (std scaling, Laves et al., MIDL 2020), ``b``
is the error floor the latent std cannot see (reference noise, model misfit). For
energies and virials ``b`` is the std of independent noise on each local energy
(local virial), so a total over ``N`` atoms has floor ``b sqrt(N)`` (``w = N`` for
totals, ``w = 1/N`` for values per atom, ``w = 1`` for forces): gap_fit's
``sigma_per_atom`` convention, the one the training noise used. ``c`` is a relative
error of the derivatives of the energy: an error in the curvature of the surface
gives force (virial) errors along the force (virial) that grow with the displacement,
so with the force, and the stationary kernel's std does not follow them (for a force
this is the covariance ``c^2 F F^T``; on cu_emt it lowers the test-set 68 % coverage
of force components from 74 % to 70 %, see the README). Local energies (not
observable) take the energy map with ``w = 1``.

``(a, b, c)`` maximise the Gaussian likelihood of the held-out errors ``e``,
``sum_i log N(e_i | 0, s_cal,i^2)``. The map is monotone in ``s`` (it keeps the
ranking of the stds of one kind of value), few held-out configurations identify its
three parameters, and it extrapolates to large ``s``, where a non-parametric map
(isotonic regression, Kuleshov et al., ICML 2018) has no data. A scale alone would
leave the small-``s`` predictions (training-like environments, whose error is the
noise) overconfident.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import ase
import numpy as np
from scipy.optimize import minimize

from gapfit.data import Frame, as_frames, check_species, read_frames
from gapfit.errors import GapfitError
from gapfit.uncertainty import QUANTITIES, UNITS, Samples, collect

if TYPE_CHECKING:
    from gapfit.model import Model

MIN_VALUES = 10  # fewest held-out values that one map is fitted on
MIN_CONFIGS = 3  # fewest held-out configurations of a config_type with its own maps
RELATIVE = ("forces", "virial")  # quantities with a relative term c
METHOD = "scale_floor_relative"
VERSION = 1


@dataclass(frozen=True)
class StdMap:
    """One fitted map ``s_cal^2 = (scale s)^2 + floor^2 w + (relative y)^2``."""

    scale: float  # a, dimensionless
    floor: float  # b: eV (energy, virial: per local term), eV/Å (forces)
    relative: float  # c, dimensionless (std per unit of the predicted value)
    n: int  # held-out values it was fitted on


@dataclass(frozen=True)
class Calibration:
    """Fitted maps per quantity, optionally per config_type (these take precedence)."""

    quantities: Mapping[str, StdMap]
    per_config_type: Mapping[str, Mapping[str, StdMap]] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)  # held-out data summary

    def get(self, quantity: str, config_type: str) -> StdMap | None:
        """The map of ``quantity`` for ``config_type``, or None (std stays DTC)."""
        own = self.per_config_type.get(config_type, {})
        return own.get(quantity, self.quantities.get(quantity))

    def to_meta(self) -> dict:
        """JSON-ready description (stored as ``calibration`` in the model's meta)."""
        return {
            "method": METHOD,
            "version": VERSION,
            "equation": "std_cal^2 = (scale std)^2 + floor^2 w + (relative value)^2",
            "units_floor": UNITS,
            "quantities": {
                q: dataclasses.asdict(p) for q, p in self.quantities.items()
            },
            "per_config_type": {
                ct: {q: dataclasses.asdict(p) for q, p in maps.items()}
                for ct, maps in self.per_config_type.items()
            },
            "data": dict(self.data),
        }

    @classmethod
    def from_meta(cls, meta: Any, where: str) -> Calibration:
        """Validate ``to_meta`` output; GapfitError naming what is wrong otherwise."""
        fix = "recalibrate the model with `gapfit calibrate` (or refit it)."

        def bad(what: str) -> GapfitError:
            return GapfitError(f"{where}: calibration {what}; {fix}")

        def maps(obj: Any, name: str) -> dict[str, StdMap]:
            if not isinstance(obj, dict) or not set(obj) <= set(QUANTITIES):
                raise bad(f"{name} is {obj!r}, expected a map of {QUANTITIES}")
            out = {}
            for q, p in obj.items():
                try:
                    m = StdMap(
                        float(p["scale"]),
                        float(p["floor"]),
                        float(p["relative"]),
                        int(p["n"]),
                    )
                except (KeyError, TypeError, ValueError):
                    raise bad(
                        f"{name}.{q} is {p!r}, not scale, floor, relative, n"
                    ) from None
                terms = (m.scale, m.floor, m.relative)
                if not (
                    all(math.isfinite(t) and t >= 0 for t in terms) and sum(terms) > 0
                ):
                    raise bad(
                        f"{name}.{q} has scale {m.scale}, floor {m.floor}, "
                        f"relative {m.relative} (need finite, >= 0, not all 0)"
                    )
                if m.relative and q not in RELATIVE:
                    raise bad(f"{name}.{q} has relative {m.relative}; only 0 is valid")
                out[q] = m
            return out

        if not isinstance(meta, dict):
            raise bad(f"is {type(meta).__name__}, not a mapping")
        if meta.get("method") != METHOD:
            raise bad(f"method {meta.get('method')!r} is not {METHOD!r}")
        version = meta.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise bad(f"version {version!r} is not one this gapfit reads ({VERSION})")
        per_type = meta.get("per_config_type", {})
        if not isinstance(per_type, dict):
            raise bad(f"per_config_type is {per_type!r}, not a mapping")
        data = meta.get("data", {})
        return cls(
            maps(meta.get("quantities"), "quantities"),
            {str(ct): maps(m, f"per_config_type.{ct}") for ct, m in per_type.items()},
            data if isinstance(data, dict) else {},
        )


# ---- numerics -------------------------------------------------------------------
def calibrated_std(
    std: np.ndarray,
    p: StdMap,
    weight: np.ndarray | float,
    value: np.ndarray | float = 0.0,
    unit: float = 1.0,
) -> np.ndarray:
    """``sqrt((a s)^2 + (unit b)^2 w + (c y)^2)`` for stds ``s`` of predicted values
    ``y`` (same shape); ``unit`` converts the floor (1/V: virial -> stress)."""
    return np.sqrt(
        (p.scale * np.asarray(std)) ** 2
        + (unit * p.floor) ** 2 * np.asarray(weight)
        + (p.relative * np.asarray(value)) ** 2
    )


def fit_std_map(
    error: np.ndarray,
    std: np.ndarray,
    weight: np.ndarray,
    value: np.ndarray | None = None,
) -> StdMap:
    """Maximum-likelihood map: ``e_i ~ N(0, a^2 s_i^2 + b^2 w_i + c^2 y_i^2)``.

    Args:
        error: (n,) held-out errors. std: (n,) predicted stds (same units).
        weight: (n,) floor weights ``w`` (> 0). value: (n,) predicted values ``y``,
            or None for no relative term (``c = 0``).

    The variance is linear in ``u = (a^2, b^2, c^2) >= 0``: ``var = X^T u`` with
    columns ``X = (s^2, w, y^2)``. Each ``u_k`` is scaled so that 1 alone explains the
    mean squared error; the mean negative log-likelihood is minimised by L-BFGS-B with
    its exact gradient from each term alone and from an equal mix, the best kept.
    """
    e2 = np.ravel(np.asarray(error, dtype=float)) ** 2  # (n,)
    cols = [np.ravel(std) ** 2, np.broadcast_to(np.ravel(weight), e2.shape)]
    if value is not None and np.any(value):  # all-zero values: no relative term
        cols.append(np.ravel(value) ** 2)
    X = np.stack(cols).astype(float)  # (K, n)
    K, n = X.shape
    if not (np.isfinite(e2).all() and np.isfinite(X).all() and n >= 2):
        raise GapfitError(
            f"calibration needs >= 2 finite errors and stds, got {n} values "
            "(some not finite?); check the held-out labels and the model."
        )
    mse = float(e2.mean())
    if mse == 0 or X[0].mean() == 0:
        raise GapfitError(
            "calibration: the held-out errors (or the predicted stds) are all zero; "
            "held-out data must be configurations the model was not fitted on."
        )
    unit = mse / X.mean(axis=1)  # (K,): u = unit * x

    def nll(x: np.ndarray) -> tuple[float, np.ndarray]:
        var = (unit * x) @ X  # (n,)
        d = 0.5 * (1.0 / var - e2 / var**2)  # d nll_i / d var_i
        return float(np.mean(0.5 * np.log(var) + 0.5 * e2 / var)), unit * (X @ d) / n

    starts = [np.where(np.arange(K) == k, 1.0, 1e-6) for k in range(K)]
    best = min(
        (
            minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=[(1e-12, None)] * K)
            for x0 in [*starts, np.full(K, 1.0 / K)]
        ),
        key=lambda r: r.fun,
    )
    u = np.sqrt(unit * best.x)
    return StdMap(float(u[0]), float(u[1]), float(u[2]) if K == 3 else 0.0, n)


# ---- data -> samples -> calibration ---------------------------------------------
def fit_calibration(
    samples: Mapping[str, Samples],
    per_config_type: bool = False,
    data: Mapping[str, Any] | None = None,
) -> Calibration:
    """Fit one map per quantity with >= ``MIN_VALUES`` values (the others keep the
    DTC std), and with ``per_config_type`` also one per config_type that has as many
    and ``MIN_CONFIGS`` held-out configurations (counted in ``data["config_types"]``,
    the ``summary`` of the held-out frames): a map from one configuration describes
    that configuration, not its kind.

    Raises:
        GapfitError: no quantity has ``MIN_VALUES`` held-out values.
    """
    quantities = {
        q: _fit(q, s) for q, s in samples.items() if len(s.error) >= MIN_VALUES
    }
    if not quantities:
        counts = {q: len(s.error) for q, s in samples.items()}
        raise GapfitError(
            f"calibration needs >= {MIN_VALUES} held-out values of a quantity "
            f"(energies, force components or virials), found {counts or 'none'}; "
            "give more labelled configurations the model was not fitted on."
        )
    per_type: dict[str, dict[str, StdMap]] = {}
    configs = dict((data or {}).get("config_types", {}))
    if per_config_type:
        for q, s in samples.items():
            for ct in np.unique(s.config_type):
                sel = s.config_type == ct
                if sel.sum() >= MIN_VALUES and configs.get(str(ct), 0) >= MIN_CONFIGS:
                    part = Samples(*(x[sel] for x in s))
                    per_type.setdefault(str(ct), {})[q] = _fit(q, part)
    return Calibration(quantities, per_type, dict(data or {}))


def _fit(quantity: str, s: Samples) -> StdMap:
    value = s.reference + s.error if quantity in RELATIVE else None  # predicted
    return fit_std_map(s.error, s.std, s.weight, value)


def calibrate_samples(
    cal: Calibration, samples: Mapping[str, Samples]
) -> dict[str, Samples]:
    """``samples`` with the std of each value replaced by its calibrated std."""
    out = {}
    for q, s in samples.items():
        std = s.std.copy()
        for ct in np.unique(s.config_type):
            p = cal.get(q, str(ct))
            sel = s.config_type == ct
            if p is not None:
                value = s.reference[sel] + s.error[sel] if q in RELATIVE else 0.0
                std[sel] = calibrated_std(s.std[sel], p, s.weight[sel], value)
        out[q] = s._replace(std=std)
    return out


def apply(
    cal: Calibration,
    pred: dict,
    n_atoms: int,
    config_type: str,
    volume: float | None,
) -> dict:
    """One ``Model.predict`` result with calibrated ``*_std`` and the DTC stds kept
    as ``*_std_raw`` (e.g. ``forces_std_raw``)."""
    rules = {  # std key: (quantity, floor weight, predicted value, floor unit)
        "energy_std": ("energy", n_atoms, 0.0, 1.0),  # energies: no relative term
        "energies_std": ("energy", 1, 0.0, 1.0),
        "forces_std": ("forces", 1, pred["forces"], 1.0),
        "virial_std": ("virial", n_atoms, pred.get("virial"), 1.0),
        "stress_std": ("virial", n_atoms, pred.get("stress"), 1 / (volume or 1.0)),
    }
    out = dict(pred)
    for key, (q, weight, value, unit) in rules.items():
        p = cal.get(q, config_type)
        if key in pred and p is not None:
            out[key + "_raw"] = pred[key]
            std = calibrated_std(pred[key], p, weight, value, unit)
            out[key] = float(std) if np.ndim(pred[key]) == 0 else std
    return out


def config_type_of(structure: Any) -> str:
    """``config_type`` of a Frame or of ``atoms.info`` ("default" when absent)."""
    if isinstance(structure, Frame):
        return structure.config_type
    info = getattr(structure, "info", None) or {}
    return str(info.get("config_type", "default"))


# ---- models ---------------------------------------------------------------------
def without_calibration(model: Model) -> Model:
    """The model with DTC stds only (its calibration, if any, dropped)."""
    info = {k: v for k, v in model.info.items() if k != "calibration"}
    return dataclasses.replace(model, info=info)


def with_calibration(model: Model, cal: Calibration) -> Model:
    """A copy of ``model`` whose predicted ``*_std`` are calibrated by ``cal``."""
    return dataclasses.replace(model, info={**model.info, "calibration": cal.to_meta()})


def held_out_frames(
    frames: str | os.PathLike | Sequence[ase.Atoms | Frame], species: Sequence[int]
) -> list[Frame]:
    """Validated frames of a path, ASE Atoms or Frames, checked against ``species``
    and for labels (GapfitError before any slow prediction)."""
    if isinstance(frames, str | os.PathLike):
        out = read_frames(frames, require=())
    else:
        out = as_frames(frames, require=())
    check_species(out, species)
    if not any(
        f.energy is not None or f.forces is not None or f.virial is not None
        for f in out
        if f.config_type != "isolated_atom"
    ):
        raise GapfitError(
            "calibration needs labelled held-out configurations: none of the "
            f"{len(out)} given has an energy, forces or a virial (isolated atoms do "
            "not count); give labelled ones."
        )
    return out


class Calibrated(NamedTuple):
    """What ``calibrate`` returns."""

    model: Model  # the calibrated model
    samples: dict[str, dict[str, Samples]]  # held-out values: {"DTC", "calibrated"}


def calibrate(
    model: Model,
    frames: str | os.PathLike | Sequence[ase.Atoms | Frame],
    per_config_type: bool = False,
) -> Calibrated:
    """Calibrate ``model``'s stds on labelled held-out ``frames`` (neither training
    nor test data). Returns the new model (save it with ``Model.save``) and the
    held-out values with their DTC and calibrated stds (``uncertainty_table``)."""
    frames = held_out_frames(frames, model.species)
    raw = without_calibration(model)
    preds = raw.predict(frames, std=True, wheres=[f.where for f in frames])
    return calibrated_on(model, frames, preds, per_config_type, summary(frames))


def calibrated_on(
    model: Model,
    frames: Sequence[Frame],
    preds: Sequence[dict],
    per_config_type: bool,
    data: Mapping[str, Any],
) -> Calibrated:
    """``model`` calibrated on held-out ``frames`` and their DTC predictions
    ``preds`` (``Model.predict(..., std=True)``), ``data`` describing them; with the
    values and their DTC and calibrated stds."""
    samples = collect(frames, preds)
    cal = fit_calibration(samples, per_config_type, data)
    return Calibrated(
        with_calibration(model, cal),
        {"DTC": samples, "calibrated": calibrate_samples(cal, samples)},
    )


def std_samples(
    model: Model, frames: Sequence[Frame], preds: Sequence[dict]
) -> dict[str, dict[str, Samples]]:
    """Held-out values with the stds of ``preds`` (``model.predict(..., std=True)``):
    ``{"DTC": ...}``, plus ``"calibrated"`` for a calibrated model."""
    if model.calibration is None:
        return {"DTC": collect(frames, preds)}
    return {
        "DTC": collect(frames, preds, "_std_raw"),
        "calibrated": collect(frames, preds),
    }


def summary(frames: Sequence[Frame]) -> dict:
    """Counts and sha256 of the held-out data (as stored for training data)."""
    from gapfit.fit import _data_summary  # gapfit.fit imports gapfit.model, this

    return _data_summary(frames)


# ---- text -----------------------------------------------------------------------
def describe(cal: Calibration) -> str:
    """The fitted maps as text lines (floors in meV units)."""

    def one(maps: Mapping[str, StdMap]) -> str:
        return "; ".join(
            f"{q} scale {p.scale:.4g} floor {1e3 * p.floor:.4g} m{UNITS[q]} "
            f"relative {p.relative:.3g} (n {p.n})"
            for q, p in maps.items()
        )

    n = cal.data.get("n_configs", "?")
    how = f"; {cal.data['held_out']}" if "held_out" in cal.data else ""
    lines = [
        "calibration (std_cal^2 = (scale std)^2 + floor^2 w + (relative value)^2, "
        f"{n} held-out configs{how}): {one(cal.quantities)}"
    ]
    lines += [f"  config_type {ct}: {one(m)}" for ct, m in cal.per_config_type.items()]
    return "\n".join(lines)
