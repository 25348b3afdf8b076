"""PNG figures of a model on labelled data: parity and calibration of the stds.

Drawn with matplotlib's Agg canvas (no display, no global pyplot state) from the
held-out values of ``gapfit.calibration.collect``: parity plots of the energy per atom,
the force components and the virial per atom (Voigt components), coloured by
config_type; the calibration curve, observed against expected coverage of central
Gaussian intervals ``|e| <= z_p s`` for p in (0, 1) (on the diagonal when the errors
are Gaussian with the predicted std); and |error| against the predicted std with the
RMSE of equal-count bins of std against their root-mean-square std (the
"RMSE vs RMV" curve of Levi et al., Sensors 22, 5540 (2022); on the diagonal when
calibrated). Files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from gapfit.errors import GapfitError
from gapfit.model import atomic_write
from gapfit.uncertainty import QUANTITIES, UNITS, Samples, coverage

LABELS = {
    "energy": "energy per atom",
    "forces": "force components",
    "virial": "virial per atom (Voigt)",
}
N_BINS = 12  # equal-count bins of std, each of at least MIN_PER_BIN values
MIN_PER_BIN = 10
LEVELS = np.linspace(0.01, 0.99, 99)


def _figure(n_panels: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * n_panels, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def log_log(ax) -> None:
    """Log-log axes ticked at 1, 2, 5 x 10^k with plain numbers (over less than two
    decades matplotlib's default labels every minor tick as 10^k multiples)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    return path


def parity(q: str, s: Samples) -> Figure:
    """Predicted against reference values of one quantity, coloured by config_type."""
    fig, (ax,) = _figure(1)
    pred = s.reference + s.error
    for ct in np.unique(s.config_type):
        sel = s.config_type == ct
        ax.scatter(s.reference[sel], pred[sel], s=4, alpha=0.6, label=str(ct))
    lo, hi = (
        min(s.reference.min(), pred.min()),
        max(s.reference.max(), pred.max()),
    )
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    rmse = 1e3 * np.sqrt(np.mean(s.error**2))
    mae = 1e3 * np.mean(np.abs(s.error))
    ax.set(
        xlabel=f"reference {LABELS[q]} ({UNITS[q]})",
        ylabel=f"predicted ({UNITS[q]})",
        title=f"{LABELS[q]}\nRMSE {rmse:.3g}, MAE {mae:.3g} m{UNITS[q]}",
    )
    ax.legend(fontsize="small", markerscale=2, title="config_type")
    return fig


def coverage_curves(samples: Mapping[str, Mapping[str, Samples]]) -> Figure:
    """Observed against expected coverage, one panel per quantity, a line per std."""
    present = [q for q in QUANTITIES if any(q in v for v in samples.values())]
    fig, axes = _figure(len(present))
    for ax, q in zip(axes, present, strict=True):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, label="ideal")
        for label, by_q in samples.items():
            if q in by_q:
                ax.plot(
                    LEVELS, coverage(by_q[q].error, by_q[q].std, LEVELS), label=label
                )
        ax.set(
            xlabel="expected coverage (central Gaussian interval)",
            ylabel="observed coverage",
            title=LABELS[q],
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
        )
        ax.legend(fontsize="small")
    return fig


def error_vs_std(samples: Mapping[str, Mapping[str, Samples]]) -> Figure:
    """|error| against std of the last std label, binned RMSE against RMS std for
    every label, log-log, one panel per quantity (values in meV)."""
    present = [q for q in QUANTITIES if any(q in v for v in samples.values())]
    fig, axes = _figure(len(present))
    for ax, q in zip(axes, present, strict=True):
        last = [v[q] for v in samples.values() if q in v][-1]
        err, std = 1e3 * np.abs(last.error), 1e3 * last.std
        ax.scatter(std, err, s=3, alpha=0.25, color="0.5", label="|error|")
        for label, by_q in samples.items():
            if q in by_q:
                s = by_q[q]
                n_bins = min(N_BINS, max(1, len(s.std) // MIN_PER_BIN))
                bins = np.array_split(np.argsort(s.std), n_bins)
                rms = [1e3 * np.sqrt(np.mean(s.std[b] ** 2)) for b in bins]
                rmse = [1e3 * np.sqrt(np.mean(s.error[b] ** 2)) for b in bins]
                ax.plot(rms, rmse, "o-", ms=4, label=f"binned RMSE ({label} std)")
        every = np.concatenate([1e3 * v[q].std for v in samples.values() if q in v])
        lo, hi = every[every > 0].min(), every.max()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="error = std")
        ax.plot([lo, hi], [1.96 * lo, 1.96 * hi], "k--", lw=0.8, label="1.96 std")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=f"predicted std (m{UNITS[q]})",
            ylabel=f"|error| (m{UNITS[q]})",
            title=LABELS[q],
        )
        ax.legend(fontsize="small")
    return fig


def plot_folder(directory: str | os.PathLike) -> Path:
    """``directory``, created if needed; GapfitError if it cannot hold the PNGs."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GapfitError(
            f"--plot {out}: cannot create the folder ({err}); give a writable one."
        ) from err
    if not os.access(out, os.W_OK):
        raise GapfitError(f"--plot {out}: folder is not writable; give another.")
    return out


def write_plots(
    directory: str | os.PathLike, samples: Mapping[str, Mapping[str, Samples]]
) -> list[Path]:
    """Write the parity and calibration PNGs into ``directory`` (created if needed).

    Args:
        directory: output folder.
        samples: {std label: {quantity: Samples}} of the same values, e.g.
            ``{"DTC": collect(frames, preds, "_std_raw"), "calibrated": ...}``;
            the parity plots use the first label's values.

    Returns:
        The paths written: ``parity_<quantity>.png``, ``calibration_coverage.png``,
        ``calibration_error_vs_std.png``.
    """
    out = plot_folder(directory)
    if not samples or not any(samples.values()):
        raise GapfitError("no labelled energies, forces or virials to plot.")
    first = next(iter(samples.values()))
    paths = [_save(parity(q, s), out / f"parity_{q}.png") for q, s in first.items()]
    paths.append(_save(coverage_curves(samples), out / "calibration_coverage.png"))
    paths.append(_save(error_vs_std(samples), out / "calibration_error_vs_std.png"))
    return paths
