"""Held-out errors against predicted standard deviations, and metrics of the stds.

``collect`` turns labelled frames and their predictions into flat ``Samples`` per
quantity: energy per atom (eV/atom), force components (eV/Å, atom-major) and virial
per atom as its 6 Voigt components (eV/atom); ``isolated_atom`` configurations are
left out, as in the error tables (``gapfit.report``).

Metrics (Tran et al., Mach. Learn.: Sci. Technol. 1, 025006 (2020)): the observed
coverage of central Gaussian intervals ``|e| <= z_p s`` (``z_p = Phi^-1((1 + p)/2)``,
p = 68.27 % and 95 %), the mean negative log-likelihood
``0.5 log(2 pi s^2) + e^2 / (2 s^2)`` and the Spearman rank correlation of ``|e|`` and
``s`` (forces: per-atom norms of the error and the std, ``sqrt(sum_k s_k^2)``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy.special import ndtri

from gapfit.blocks import VOIGT_INDEX
from gapfit.data import Frame

QUANTITIES = ("energy", "forces", "virial")
UNITS = {"energy": "eV/atom", "forces": "eV/Å", "virial": "eV/atom"}
LEVELS = (0.6827, 0.95)  # central interval probabilities reported as coverage


class Samples(NamedTuple):
    """Held-out values of one quantity, flattened (forces: atom-major, 3 per atom)."""

    reference: np.ndarray  # (n,) labelled value, eV/atom, eV/Å or eV/atom
    error: np.ndarray  # (n,) predicted - reference, same units
    std: np.ndarray  # (n,) predicted std, same units
    weight: np.ndarray  # (n,) floor weight w: 1/N (per atom) or 1 (forces)
    config_type: np.ndarray  # (n,) str


def coverage(error: np.ndarray, std: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Observed fraction ``(k,)`` of ``|e| <= z_p s`` for each central level ``p``."""
    z = ndtri(0.5 + 0.5 * np.asarray(levels, dtype=float))  # (k,)
    ratio = np.abs(np.ravel(error)) / np.ravel(std)  # (n,)
    return np.mean(ratio[None, :] <= z[:, None], axis=1)


def nll(error: np.ndarray, std: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood ``0.5 log(2 pi s^2) + e^2 / (2 s^2)``."""
    e, s = np.ravel(error), np.ravel(std)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (e / s) ** 2))


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (n,), ties given their average rank."""
    x = np.ravel(x)
    ordinal = np.empty(len(x))
    ordinal[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    _, tie, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(tie, ordinal) / counts)[tie]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of the average ranks)."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx @ rx) * (ry @ ry)))
    return float(rx @ ry) / denom if denom > 0 else float("nan")


def metrics(quantity: str, error: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """n, RMSE, MAE, coverage at ``LEVELS``, NLL and Spearman in the given units.

    Forces are atom-major components (3 per atom); their Spearman correlation is
    between per-atom norms of the error and of the std.
    """
    e, s = np.ravel(error), np.ravel(std)
    if quantity == "forces":
        rho = spearman(
            np.linalg.norm(e.reshape(-1, 3), axis=1),
            np.linalg.norm(s.reshape(-1, 3), axis=1),
        )
    else:
        rho = spearman(np.abs(e), s)
    cov = coverage(e, s, LEVELS)
    return {
        "n": len(e),
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mae": float(np.mean(np.abs(e))),
        "coverage_68": float(cov[0]),
        "coverage_95": float(cov[1]),
        "nll": nll(e, s),
        "spearman": rho,
    }


def collect(
    frames: Sequence[Frame], preds: Sequence[dict], suffix: str = "_std"
) -> dict[str, Samples]:
    """Held-out values of every labelled quantity (``isolated_atom`` left out).

    Args:
        frames: labelled frames. preds: ``Model.predict(frames, std=True)``.
        suffix: which std to take: ``"_std"`` or ``"_std_raw"`` (DTC, calibrated
            models only; a quantity that the calibration does not cover has no
            ``_std_raw``: its ``_std`` is the DTC one and is taken).

    Returns:
        {quantity: Samples} for the quantities with at least one label.
    """
    parts: dict[str, list[tuple]] = {q: [] for q in QUANTITIES}

    def add(q: str, f: Frame, ref, pred, std, per: int) -> None:
        ref, pred, std = (np.ravel(x) for x in (ref, pred, std))
        parts[q].append(
            (ref / per, (pred - ref) / per, std / per, 1 / per, f.config_type)
        )

    for f, p in zip(frames, preds, strict=True):
        if f.config_type == "isolated_atom":
            continue
        n = len(f.numbers)
        std = {q: p.get(q + suffix, p[q + "_std"]) for q in QUANTITIES}
        if f.energy is not None:
            add("energy", f, f.energy, p["energy"], std["energy"], n)
        if f.forces is not None:
            at = f.fitted_atoms()
            add("forces", f, f.forces[at], p["forces"][at], std["forces"][at], 1)
        if f.virial is not None:
            v = std["virial"]
            i = VOIGT_INDEX  # the 6 independent components
            add("virial", f, f.virial[i], p["virial"][i], v[i], n)
    out = {}
    for q, rows in parts.items():
        if rows:
            ref, err, std, w, ct = zip(*rows, strict=True)
            sizes = [len(r) for r in ref]
            out[q] = Samples(
                np.concatenate(ref),
                np.concatenate(err),
                np.concatenate(std),
                np.repeat(w, sizes),
                np.repeat(np.array(ct), sizes),
            )
    return out


def uncertainty_table(
    samples: Mapping[str, Mapping[str, Samples]],
) -> dict[str, dict[str, dict[str, float]]]:
    """{quantity: {label: metrics}} for several stds of the same values, e.g.
    ``{"DTC": collect(...), "calibrated": ...}``; errors and stds in meV."""
    return {
        q: {
            label: metrics(q, 1e3 * by_q[q].error, 1e3 * by_q[q].std)
            for label, by_q in samples.items()
            if q in by_q
        }
        for q in QUANTITIES
        if any(q in by_q for by_q in samples.values())
    }


def format_uncertainty_table(
    table: Mapping[str, Mapping[str, dict]], title: str = ""
) -> str:
    """Fixed-width text of ``uncertainty_table`` output."""
    head = (
        f"{'quantity':<9}{'std':<12}{'n':>7}{'RMSE':>9}{'MAE':>9}{'cov68':>8}"
        f"{'cov95':>8}{'NLL':>8}{'Spearman':>10}"
    )
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for q, rows in table.items():
        for label, m in rows.items():
            lines.append(
                f"{q:<9}{label:<12}{m['n']:>7}{m['rmse']:>9.3f}{m['mae']:>9.3f}"
                f"{100 * m['coverage_68']:>7.1f}%{100 * m['coverage_95']:>7.1f}%"
                f"{m['nll']:>8.3f}{m['spearman']:>10.3f}"
            )
    legend = (
        "RMSE, MAE in "
        + ", ".join(f"m{UNITS[q]} ({q})" for q in table)
        + "; cov68/cov95: fraction of errors inside the 68.27 % / 95 % Gaussian "
        "interval (nominal 68.3 / 95.0); NLL: mean Gaussian negative log-likelihood "
        "in those units; Spearman: rank correlation of |error| and std (forces: "
        "per-atom norms)."
    )
    return "\n".join(lines + [textwrap.fill(legend, len(head))])
