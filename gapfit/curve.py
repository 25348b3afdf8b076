"""Learning curves of active learning: errors and stds against the number of labels.

One row per step: ``n_labels`` (labelled frames in the model), ``n_sparse`` (SOAP
sparse points), ``max_std`` (what drove the step: the largest energy std per atom of
the unlabelled pool in eV/atom, or the largest force-component std in eV/Å, scaled
by ``std_scale``, that triggered an on-the-fly label), and with a test set the test
RMSEs of the energy per atom (meV/atom) and of the force components (meV/Å) next to
the mean predicted std of the same quantities (``e_std``, ``f_std``, same units; the
DTC std of ``Model.predict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gapfit.data import Frame
from gapfit.model import Model
from gapfit.report import error_table

COLUMNS = (
    "n_labels",
    "n_sparse",
    "max_std",
    "std_scale",
    "e_rmse",
    "e_std",
    "f_rmse",
    "f_std",
)
UNITS = {
    "max_std": "eV/at|eV/Å",
    "e_rmse": "meV/atom",
    "e_std": "meV/atom",
    "f_rmse": "meV/Å",
    "f_std": "meV/Å",
}


def test_errors(model: Model, frames: Sequence[Frame]) -> dict[str, float]:
    """Test RMSEs and mean predicted stds: energy per atom (meV/atom) and force
    components (meV/Å)."""
    preds = model.predict(frames, std=True, wheres=[f.where for f in frames])
    table = error_table(frames, preds)["all"]
    n = np.array([len(f.numbers) for f in frames])
    e_std = np.array([p["energy_std"] for p in preds]) / n
    f_std = np.concatenate([np.ravel(p["forces_std"]) for p in preds])
    return {
        "e_rmse": table["energy"]["rmse"],
        "e_std": 1e3 * float(np.mean(e_std)),
        "f_rmse": table["forces"]["rmse"],
        "f_std": 1e3 * float(np.mean(f_std)),
    }


def format_curve(rows: Sequence[dict]) -> str:
    """Fixed-width table of the curve's rows (missing values as '-')."""
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    head = "".join(f"{c:>11}" for c in cols)
    units = "".join(f"{UNITS.get(c, ''):>11}" for c in cols)

    def cell(v) -> str:
        if v is None:
            return f"{'-':>11}"
        return f"{v:>11d}" if isinstance(v, int) else f"{v:>11.4g}"

    lines = [head, units, "-" * len(head)]
    lines += ["".join(cell(r.get(c)) for c in cols) for r in rows]
    return "\n".join(lines)


def curve_csv(rows: Sequence[dict]) -> str:
    """CSV text of the curve (header = ``COLUMNS``)."""
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else str(r[c]) for c in COLUMNS))
    return "\n".join(lines) + "\n"


def plot_curve(rows: Sequence[dict], path: str | Path) -> Path:
    """PNG of test RMSE and mean predicted std (energy, forces) against the number of
    labels, log-log, written atomically."""
    from gapfit.plots import _figure, _save, log_log  # matplotlib only when plotting

    fig, axes = _figure(2)
    n = [r["n_labels"] for r in rows]
    for ax, q, unit in zip(axes, ("e", "f"), ("meV/atom", "meV/Å"), strict=True):
        ax.plot(n, [r.get(f"{q}_rmse") for r in rows], "o-", label="test RMSE")
        ax.plot(n, [r.get(f"{q}_std") for r in rows], "s--", label="mean predicted std")
        log_log(ax)
        ax.set_xlabel("labelled frames")
        ax.set_ylabel(f"{'energy per atom' if q == 'e' else 'force'} ({unit})")
        ax.legend()
    return _save(fig, Path(path))
