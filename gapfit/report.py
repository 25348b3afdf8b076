"""Error tables: RMSE / MAE per config_type, in the units of the shared metrics.

Energy per atom (meV/atom), force components (meV/Å), virial per atom over all nine
components (meV/atom). ``isolated_atom`` configurations are left out, as in
gap_fit-style benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gapfit.data import Frame

QUANTITIES = ("energy", "forces", "virial")


def _stats(sum_sq: float, sum_abs: float, n: int) -> dict:
    if n == 0:
        return {"rmse": None, "mae": None, "n": 0}
    return {
        "rmse": float(np.sqrt(sum_sq / n)),
        "mae": float(sum_abs / n),
        "n": int(n),
    }


def error_sums(frames: Sequence[Frame], preds: Sequence[dict]) -> dict[str, dict]:
    """What ``error_table`` is made of: per config_type and ``all``, ``n_configs``
    and per quantity ``[Σ e², Σ |e|, n]`` (e in the table's units). Sums over parts
    of the data add up (``merge_error_sums``), so workers each return theirs."""
    sums: dict[str, dict] = {}
    for f, p in zip(frames, preds, strict=True):
        if f.config_type == "isolated_atom":
            continue
        n = len(f.numbers)
        errors = {}
        if f.energy is not None:
            errors["energy"] = np.array([(p["energy"] - f.energy) / n * 1e3])
        if f.forces is not None:
            at = f.fitted_atoms()
            errors["forces"] = np.ravel((p["forces"][at] - f.forces[at]) * 1e3)
        if f.virial is not None:
            errors["virial"] = np.ravel((p["virial"] - f.virial) / n * 1e3)
        for key in (f.config_type, "all"):
            g = sums.setdefault(key, _zero_sums())
            g["n_configs"] += 1
            for q, e in errors.items():
                g[q] = [
                    g[q][0] + float(e @ e),
                    g[q][1] + float(np.abs(e).sum()),
                    g[q][2] + e.size,
                ]
    return sums


def _zero_sums() -> dict:
    return {"n_configs": 0, **{q: [0.0, 0.0, 0] for q in QUANTITIES}}


def merge_error_sums(parts: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """``error_sums`` of the union of the parts' data."""
    out: dict[str, dict] = {}
    for part in parts:
        for key, g in part.items():
            o = out.setdefault(key, _zero_sums())
            o["n_configs"] += g["n_configs"]
            for q in QUANTITIES:
                o[q] = [a + b for a, b in zip(o[q], g[q], strict=True)]
    return out


def table_from_sums(sums: dict[str, dict]) -> dict[str, dict]:
    """``error_table`` from ``error_sums``."""
    order = sorted(k for k in sums if k != "all") + (["all"] if "all" in sums else [])
    return {
        k: {
            "n_configs": sums[k]["n_configs"],
            **{q: _stats(*sums[k][q]) for q in QUANTITIES},
        }
        for k in order
    }


def error_table(frames: Sequence[Frame], preds: Sequence[dict]) -> dict[str, dict]:
    """Errors of predictions against labelled frames, per config_type and ``all``.

    Returns:
        {config_type: {"energy": stats meV/atom, "forces": stats meV/Å,
        "virial": stats meV/atom, "n_configs": int}} with stats ``rmse``, ``mae``,
        ``n``.
    """
    return table_from_sums(error_sums(frames, preds))


def format_error_table(table: dict[str, dict], title: str = "") -> str:
    """A fixed-width text table of ``error_table`` output."""
    head = (
        f"{'config_type':<18}{'n':>5}  {'E RMSE':>9}{'E MAE':>9}  "
        f"{'F RMSE':>9}{'F MAE':>9}  {'V RMSE':>9}{'V MAE':>9}"
    )
    units = f"{'':<18}{'':>5}  {'meV/atom':>18}  {'meV/Å':>18}  {'meV/atom':>18}"
    lines = [title] if title else []
    lines += [head, units, "-" * len(head)]

    def cell(s: dict, key: str) -> str:
        return f"{s[key]:>9.3f}" if s[key] is not None else f"{'-':>9}"

    for name, row in table.items():
        if name == "all":
            lines.append("-" * len(head))
        lines.append(
            f"{name[:18]:<18}{row['n_configs']:>5}  "
            + "  ".join(
                cell(row[q], "rmse") + cell(row[q], "mae")
                for q in ("energy", "forces", "virial")
            )
        )
    return "\n".join(lines)
