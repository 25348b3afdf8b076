"""Descriptor settings chosen on the data instead of by hand: a grid search scored by
cross-validation and by the evidence.

gap_fit leaves the SOAP settings (cutoff, atom_sigma, n_max, l_max, zeta, ...) to the
user. ``grid_search`` fits every combination of the values given for some of them,
each with its delta and sigmas chosen by the evidence (``gapfit.hyperparameters``),
and scores it twice: its ``k``-fold cross-validated test errors on the training data
(``gapfit.crossval``: k models from one pass, no refits) and its final log evidence
(nats; a marginal likelihood of the same labels, so comparable across descriptors,
though only as well as the DTC approximation). The fitted ``GAP`` of the best
combination by the chosen score is returned with the table.

Grid keys are SOAP settings (``cutoff``, ``atom_sigma``, ...), 2-body settings
written ``distance_2b.<key>`` (``distance_2b.theta_uniform``) or 3-body ones written
``angle_3b.<key>`` (``angle_3b.cutoff``); with several terms of one kind, a further
term's settings are written with its name (``soap_2.cutoff``,
``distance_2b_2.delta``). Values are validated as in ``gapfit fit``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ase
import jax
from tqdm.auto import tqdm

from gapfit.crossval import cross_validated
from gapfit.data import Frame
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gapstring import ANGLE_3B_DEFAULTS, DISTANCE_2B_DEFAULTS, SOAP_DEFAULTS
from gapfit.memory import release_freed
from gapfit.report import error_table

# term kind -> (its settings, what to call it, the option that adds it)
TERMS = {
    "distance_2b": (DISTANCE_2B_DEFAULTS, "2-body", "--distance-2b"),
    "angle_3b": (ANGLE_3B_DEFAULTS, "3-body", "--angle-3b"),
    "soap": (SOAP_DEFAULTS, "SOAP", "--soap"),
}
_TERM_NAME = re.compile(r"(soap|distance_2b|angle_3b)(_[2-9]|_[1-9][0-9]+)?")
CRITERIA = ("cv_forces", "cv_energy", "evidence")  # what "best" means


@dataclasses.dataclass
class TuneResult:
    """The grid's rows (settings, scores, seconds), best first, and the best
    point's fitted ``GAP``."""

    rows: list[dict]
    best: GAP
    select: str


def parse_grid(items: Sequence[str] | Mapping[str, Sequence[Any]]) -> dict[str, list]:
    """``["cutoff=4.5,5.0", "atom_sigma=0.4,0.5"]`` (or a mapping) as ``{key:
    [values]}`` (values as text; checked when the settings are parsed).

    Raises:
        GapfitError: an item without ``=``, no values, an unknown key (with the
            closest valid one), or a key given twice.
    """
    pairs = (
        [(k, list(v)) for k, v in items.items()]
        if isinstance(items, Mapping)
        else [_item(text) for text in items]
    )
    grid: dict[str, list] = {}
    for key, values in pairs:
        name = key.strip().lower()
        _, term_kind, setting = _term_of(name)
        known, kind, _ = TERMS[term_kind]
        if setting not in known:
            close = difflib.get_close_matches(setting, list(known), 1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise GapfitError(
                f"--grid {key}: not a {kind} setting.{hint} Valid: {', '.join(known)}"
                " (2-body ones as distance_2b.<key>, 3-body ones as angle_3b.<key>, "
                "a second SOAP term's as soap_2.<key>)."
            )
        if name in grid:
            raise GapfitError(f"--grid {key} is given twice; give its values once.")
        if not values:
            raise GapfitError(f"--grid {key}: no values; write e.g. {key}=4.5,5.0.")
        grid[name] = values
    return grid


def _term_of(key: str) -> tuple[str, str, str]:
    """``(term name, kind, setting)`` of a grid key: ``cutoff`` is the first SOAP
    term's, ``distance_2b.cutoff`` the first 2-body term's, ``soap_2.cutoff`` the
    second SOAP term's."""
    term, dot, setting = key.rpartition(".")
    if not dot:
        return "soap", "soap", key
    match = _TERM_NAME.fullmatch(term)
    if match is None:
        raise GapfitError(
            f"--grid {key}: {term!r} is not a term name; write soap_2.<key>, "
            "distance_2b.<key>, distance_2b_2.<key> or angle_3b.<key>."
        )
    return term, match.group(1), setting


def _item(text: str) -> tuple[str, list[str]]:
    key, sep, values = str(text).partition("=")
    if not sep:
        raise GapfitError(
            f"--grid {text!r}: write key=value,value, e.g. cutoff=4.5,5.0,5.5."
        )
    return key, [v.strip() for v in values.split(",") if v.strip()]


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order the values were given."""
    keys = list(grid)
    return [dict(zip(keys, v, strict=True)) for v in itertools.product(*grid.values())]


def _with(gap: GAP, change: Mapping[str, Any]) -> GAP:
    """A copy of ``gap`` with the grid point's settings, delta and sigmas by the
    evidence, no progress bars."""
    named = {n: (k, dict(s)) for n, (k, s) in gap._term_settings().items()}
    for key, value in change.items():
        term, term_kind, name = _term_of(key)
        if term not in named:
            _, kind, option = TERMS[term_kind]
            have = ", ".join(n for n, (k, _) in named.items() if k == term_kind)
            raise GapfitError(
                f"--grid {key}: the model has no {kind} term {term} (it has {have})."
                if have
                else f"--grid {key}: the model has no {kind} term; add {option}."
            )
        settings = named[term][1]
        if name == "cutoff" and settings.get("poly_r0") == settings["cutoff"]:
            settings["poly_r0"] = None  # poly's r0 at its default follows the cutoff
        settings[name] = value
        if name in ("theta_uniform", "theta_fac"):
            other = "theta_fac" if name == "theta_uniform" else "theta_uniform"
            settings[other] = None  # the grid's lengths replace the others
    by_kind = {
        kind: [s for k, s in named.values() if k == kind] or None for kind in TERMS
    }
    params = gap.get_params() | by_kind | {"progress": False}
    params["optimise_hyperparameters"] = gap.optimise_hyperparameters or True
    out = GAP(**params)
    out._term_settings()  # each value checked before any fit
    return out


def grid_search(
    gap: GAP,
    frames: str | os.PathLike | Sequence[ase.Atoms | Frame],
    grid: Mapping[str, Sequence[Any]] | Sequence[str],
    k: int = 5,
    seed: int = 0,
    select: str = "cv_forces",
    progress: bool = False,
    test: str | os.PathLike | Sequence[ase.Atoms | Frame] | None = None,
) -> TuneResult:
    """Fit and score every combination of ``grid`` on top of ``gap``'s settings.

    Args:
        gap: the other settings (its ``optimise_hyperparameters`` is turned on if
            off: every point gets its delta and sigmas by the evidence).
        grid: ``parse_grid``'s input.
        k, seed: the cross-validation folds and their seed.
        select: ``cv_forces`` (lowest cross-validated force RMSE), ``cv_energy`` or
            ``evidence`` (highest).
        test: labelled test data: each row also gets its errors there
            (``test_energy``, ``test_forces``), for reference; never used to choose.

    Returns:
        Rows ``{"settings", "cv_energy" (meV/atom), "cv_forces" (meV/Å),
        "log_evidence" (nats), "seconds"}`` best first, and the best point's fit.
    """
    if select not in CRITERIA:
        raise GapfitError(f"--select {select}: use one of {', '.join(CRITERIA)}.")
    points = combinations(parse_grid(grid))
    gaps = [_with(gap, p) for p in points]  # all settings checked up front
    frames = gaps[0]._frames(frames)
    test = None if test is None else gaps[0]._frames(test)
    rows = []
    for point, g in tqdm(
        list(zip(points, gaps, strict=True)),
        desc="grid",
        unit="fit",
        disable=not progress,
    ):
        t0 = time.perf_counter()
        g.fit(frames)
        held, preds = cross_validated(g.model_, frames, k, seed, std=False)
        errors = error_table(held, preds)["all"]
        final = g.model_.info["hyperparameters"]["final"]
        row = {
            "settings": point,
            "cv_energy": errors["energy"]["rmse"],
            "cv_forces": errors["forces"]["rmse"],
            "log_evidence": final["log_evidence"],
        }
        if test is not None:
            on_test = error_table(test, g.model_.predict(test))["all"]
            row["test_energy"] = on_test["energy"]["rmse"]
            row["test_forces"] = on_test["forces"]["rmse"]
        rows.append({**row, "seconds": time.perf_counter() - t0, "_gap": g})
        jax.clear_caches()  # each cutoff compiles its own programs: drop them
        release_freed()
    sign = -1.0 if select == "evidence" else 1.0  # the highest evidence is best
    key = "log_evidence" if select == "evidence" else select
    rows.sort(key=lambda r: (r[key] is None, sign * (r[key] or 0.0)))
    best = rows[0]["_gap"]
    for r in rows:
        del r["_gap"]
    return TuneResult(rows, best, select)


def format_rows(result: TuneResult) -> str:
    """The grid as a text table, best first."""
    keys = list(result.rows[0]["settings"])
    test = "test_forces" in result.rows[0]
    head = [*keys, "CV E meV/atom", "CV F meV/Å", "log evidence"]
    head += ["test E", "test F"] if test else []
    lines = ["  ".join(f"{h:>14}" for h in [*head, "s"])]
    for r in result.rows:
        cells = [str(r["settings"][k]) for k in keys] + [
            _num(r["cv_energy"], 3),
            _num(r["cv_forces"], 2),
            _num(r["log_evidence"], 1),
        ]
        if test:
            cells += [_num(r["test_energy"], 3), _num(r["test_forces"], 2)]
        cells.append(f"{r['seconds']:.0f}")
        lines.append("  ".join(f"{c:>14}" for c in cells))
    lines.append(f"best by {result.select}: first row")
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
