"""Error tables: RMSE / MAE per config_type, in the units of the shared metrics.

Energy per atom (meV/atom), force components (meV/Å), virial per atom over all nine
components (meV/atom). ``isolated_atom`` configurations are left out, as in
gap_fit-style benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gapfit.data import Frame


def _stats(err: list[np.ndarray]) -> dict:
    e = np.concatenate([np.ravel(x) for x in err]) if err else np.zeros(0)
    if e.size == 0:
        return {"rmse": None, "mae": None, "n": 0}
    return {
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mae": float(np.mean(np.abs(e))),
        "n": int(e.size),
    }


def error_table(frames: Sequence[Frame], preds: Sequence[dict]) -> dict[str, dict]:
    """Errors of predictions against labelled frames, per config_type and ``all``.

    Returns:
        {config_type: {"energy": stats meV/atom, "forces": stats meV/Å,
        "virial": stats meV/atom, "n_configs": int}} with stats ``rmse``, ``mae``,
        ``n``.
    """
    groups: dict[str, dict[str, list]] = {}
    for f, p in zip(frames, preds, strict=True):
        if f.config_type == "isolated_atom":
            continue
        n = len(f.numbers)
        for key in (f.config_type, "all"):
            g = groups.setdefault(
                key, {"energy": [], "forces": [], "virial": [], "n": 0}
            )
            g["n"] += 1
            if f.energy is not None:
                g["energy"].append(np.array([(p["energy"] - f.energy) / n * 1e3]))
            if f.forces is not None:
                g["forces"].append((p["forces"] - f.forces) * 1e3)
            if f.virial is not None:
                g["virial"].append((p["virial"] - f.virial) / n * 1e3)
    order = sorted(k for k in groups if k != "all") + (
        ["all"] if "all" in groups else []
    )
    return {
        k: {
            "n_configs": groups[k]["n"],
            **{q: _stats(groups[k][q]) for q in ("energy", "forces", "virial")},
        }
        for k in order
    }


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
