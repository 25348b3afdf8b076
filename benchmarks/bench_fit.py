"""Fit, accuracy and speed of gapfit on a shared benchmark set, against gap_fit.

    python benchmarks/bench_fit.py --data ../shared/data/cu_emt [--peer]

Fits gap_fit's recipe from shared/bench/peers.md: distance_2b (cutoff 5 Å, 1 Å
transition, delta 1, theta 1 Å, 20 uniform sparse points) + SOAP (n_max 8, l_max 6,
cutoff 5 Å with a 1 Å transition, atom_sigma 0.5, zeta 4, delta 1, CUR sparse points),
default_sigma 0.001 0.05 0.05, e0 from the isolated atom (``--no-2b``: SOAP only;
``--angle-3b "cutoff=3.2 ..."``: plus gap_fit's 3-body term, ``--extra-soap "..."``:
plus a further SOAP term, repeatable; both beyond the recipe; ``--pair-settings
"..."``: settings appended to the recipe's 2-body term, e.g. gap_fit's default
``sparse_method=random``),
then prints one table: fit wall time, peak RSS after the fit, test RMSEs (E meV/atom,
F meV/Å, virial meV/atom) and the ms per energy+forces+stress call on a rattled
108-atom cell (median, min, max; without std, with the local and total energy
stds only, as gap_fit's ``local_gap_variance``, and with every std: energy, forces,
stress), each with its ratio to
gap_fit's figures in shared/bench/peers.md, or, with ``--peer``, of a gap_fit run
(PyPI quippy-ase) on the same data and recipe in the same run; on cu_emt a second
table gives the ratios to ace-jax, the strongest peer (peers.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from ase.build import bulk

from gapfit.calculator import GAPCalculator
from gapfit.data import read_frames
from gapfit.fit import GAP
from gapfit.hyperparameters import format_report
from gapfit.report import error_table, format_error_table

# gap_fit (quippy-ase 0.10.3, 2-body + SOAP) on this machine type: shared/bench/peers.md
PEERS = {
    "cu_emt": {
        "fit_s": 1760,
        "rss_gb": 15.4,
        "e": 0.10,
        "f": 6.9,
        "v": 1.35,
        "ms": 711,
        "ms_energy_std": 646,  # local_gap_variance, gap_fit's only uncertainty
        "ms_std": 646,  # the same call: gap_fit has no force or virial std
    },
    "si_xtb": {
        "fit_s": 1026,
        "rss_gb": 4.2,
        "e": 0.72,
        "f": 44.5,
        "v": 11.6,
        "ms": 342,
        "ms_energy_std": 712,
        "ms_std": 712,
    },
}
# ace-jax on cu_emt (shared/bench/peers.md), the strongest peer: fit and errors of its
# BLR fit (max degree 16); ms its calibrated ARD model's E+F (max degree 10), ms_std
# that plus the 94 ms its forces_std adds. The goals set for gapfit: fit <= 150 s,
# E+F+S <= 7 ms.
ACE_JAX = {
    "cu_emt": {
        "fit_s": 166,
        "rss_gb": 1.9,
        "e": 0.041,
        "f": 2.1,
        "v": 1.06,
        "ms": 7.3,
        "ms_std": 7.3 + 94,
    }
}
# gap_fit's recipe (shared/bench/peers.md): SOAP sparse points per data set
RECIPE_N_SPARSE = {"cu_emt": 500, "si_xtb": 1000}
ROWS = (
    ("fit wall (s)", "fit_s"),
    ("fit peak RSS (GiB)", "rss_gb"),
    ("test E RMSE (meV/atom)", "e"),
    ("test F RMSE (meV/Å)", "f"),
    ("test virial RMSE (meV/atom)", "v"),
    ("108-atom E+F+S (ms)", "ms"),
    ("108-atom E+F+S + energy std (ms)", "ms_energy_std"),
    ("108-atom E+F+S + all stds (ms)", "ms_std"),
)


def ratio_table(ours: dict, peer: dict, name: str) -> str:
    """Our figures, the peer's and their ratios (ours / peer), one row per quantity."""
    lines = [f"{'quantity':<34}{'gapfit':>12}{name:>12}{'ratio':>9}"]
    for label, key in ROWS:
        p = peer.get(key)
        ratio = f"{ours[key] / p:>9.3f}" if p else f"{'-':>9}"
        theirs = f"{p:>12.3f}" if p else f"{'-':>12}"
        lines.append(f"{label:<34}{ours[key]:>12.3f}{theirs}{ratio}")
    return "\n".join(lines)


def bench_cell(name: str):
    """The 108-atom rattled cell of shared/bench/speed.py (seed 0, 0.05 Å)."""
    rng = np.random.default_rng(0)
    if name.startswith("si"):
        at = bulk("Si", "diamond", a=5.43).repeat((3, 3, 6))
    else:
        at = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(3)
    at.positions += rng.normal(0, 0.05, at.positions.shape)
    return at


def time_calls(calc, atoms, n: int = 30, warmup: int = 3) -> dict:
    """ms per energy+forces+stress call, positions jiggled 1e-3 Å each step."""
    rng = np.random.default_rng(1)
    at = atoms.copy()
    ts = []
    for k in range(warmup + n):
        at.positions += rng.normal(0, 1e-3, at.positions.shape)
        t = time.perf_counter()
        calc.calculate(at, ["energy", "forces", "stress"], ["positions"])
        if k >= warmup:
            ts.append(1e3 * (time.perf_counter() - t))
    return {
        "median": float(np.median(ts)),
        "min": float(np.min(ts)),
        "max": float(np.max(ts)),
    }


def recipe(
    n_sparse: int,
    no_2b: bool = False,
    chunk_atoms: int = 512,
    optimise_hyperparameters: bool | str = False,
    angle_3b: str | None = None,
    extra_soap: Sequence[str] = (),
    pair_settings: str = "",
) -> GAP:
    """gap_fit's benchmark recipe (module docstring) as an unfitted ``GAP``; with
    ``optimise_hyperparameters`` its delta and sigmas are the starting values;
    ``angle_3b`` adds a 3-body term with those settings, ``extra_soap`` further SOAP
    terms; ``pair_settings`` replace the 2-body term's settings of the same keys."""
    soap = (
        "cutoff=5.0 cutoff_transition_width=1.0 n_max=8 l_max=6 atom_sigma=0.5 "
        f"zeta=4 delta=1.0 n_sparse={n_sparse} sparse_method=cur_points"
    )
    pair = (
        None
        if no_2b
        else _replaced(
            "cutoff=5.0 cutoff_transition_width=1.0 delta=1.0 theta_uniform=1.0 "
            "n_sparse=20 sparse_method=uniform",
            pair_settings,
        )
    )
    return GAP(
        soap=[soap, *extra_soap],
        distance_2b=pair,
        angle_3b=angle_3b,
        default_sigma=(0.001, 0.05, 0.05, 0.0),
        e0_method="isolated",
        rnd_seed=1,
        chunk_atoms=chunk_atoms,
        progress=True,
        optimise_hyperparameters=optimise_hyperparameters,
    )


def _replaced(settings: str, changes: str) -> str:
    """``key=value`` settings with those of ``changes`` replacing the same keys
    (``theta_fac`` replaces ``theta_uniform``: gap_fit takes one of them)."""
    new = dict(w.split("=", 1) for w in changes.split())
    drop = set(new) | ({"theta_uniform"} if "theta_fac" in new else set())
    kept = [w for w in settings.split() if w.split("=", 1)[0] not in drop]
    return " ".join(kept + [f"{k}={v}" for k, v in new.items()])


def live_peer(
    data: Path, workdir: Path, n_sparse: int, no_2b: bool, test: list, cell
) -> dict:
    """gap_fit's fit wall, peak RSS, test RMSEs and 108-atom ms, measured now."""
    import peer_gap_fit

    run = peer_gap_fit.fit(data / "train.xyz", workdir, n_sparse, no_2b)
    calc = peer_gap_fit.calculator(run["gp_file"])
    preds = []
    for f in test:
        at = f.to_atoms()
        at.calc = calc
        p = {"energy": at.get_potential_energy(), "forces": at.get_forces()}
        if at.pbc.all():
            s = at.get_stress(voigt=False)
            p["virial"] = -s * at.get_volume()
        preds.append(p)
    al = error_table(test, preds)["all"]
    variance = peer_gap_fit.calculator(run["gp_file"], variance=True)
    variance = time_calls(variance, cell)["median"]  # local energies' only
    return {
        "fit_s": run["fit_s"],
        "rss_gb": run["rss_gb"],
        "e": al["energy"]["rmse"],
        "f": al["forces"]["rmse"],
        "v": al["virial"]["rmse"],
        "ms": time_calls(calc, cell)["median"],
        "ms_energy_std": variance,
        "ms_std": variance,  # gap_fit has no force or virial std
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", required=True, type=Path, help="folder with train/test.xyz"
    )
    ap.add_argument(
        "--n-sparse",
        type=int,
        default=None,
        help="SOAP sparse points (default: gap_fit's recipe for the data set, "
        f"{RECIPE_N_SPARSE}, else 500)",
    )
    ap.add_argument(
        "--no-2b", action="store_true", help="SOAP only (no distance_2b term)"
    )
    ap.add_argument(
        "--angle-3b",
        metavar="SETTINGS",
        help="add gap_fit's 3-body term (angle_3b) with these settings",
    )
    ap.add_argument(
        "--extra-soap",
        metavar="SETTINGS",
        action="append",
        default=[],
        help="add a further SOAP term with these settings (repeatable)",
    )
    ap.add_argument(
        "--pair-settings",
        metavar="SETTINGS",
        default="",
        help="replace these settings of the recipe's 2-body term (beyond the recipe), "
        "e.g. 'sparse_method=random' (gap_fit's default)",
    )
    ap.add_argument("--chunk-atoms", type=int, default=512)
    ap.add_argument(
        "--optimise-hyperparameters",
        action="store_true",
        help="choose delta and the sigmas by the evidence, from the recipe's values",
    )
    ap.add_argument(
        "--peer",
        action="store_true",
        help="also run gap_fit (pip install quippy-ase) live on the same data and "
        "recipe, and take the ratios against that run (peer_gap_fit.py)",
    )
    ap.add_argument(
        "--peer-dir", type=Path, default=Path("gap_fit_peer"), help="gap_fit's files"
    )
    ap.add_argument("--model", type=Path, default=Path("bench_model.npz"))
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    name = args.data.name
    if args.n_sparse is None:
        args.n_sparse = RECIPE_N_SPARSE.get(name, 500)
    print(f"SOAP sparse points: {args.n_sparse}")
    device = jax.devices()[0]
    print(f"JAX device: {device.platform} ({device.device_kind})")
    t0 = time.perf_counter()
    gap = recipe(
        args.n_sparse,
        args.no_2b,
        args.chunk_atoms,
        args.optimise_hyperparameters,
        args.angle_3b,
        args.extra_soap,
        args.pair_settings,
    )
    gap.fit(args.data / "train.xyz")
    fit_s = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    gap.save(args.model)
    test = read_frames(args.data / "test.xyz")
    t0 = time.perf_counter()
    preds = gap.model_.predict(test)
    pred_s = time.perf_counter() - t0
    table = error_table(test, preds)
    print(format_error_table(table, f"test errors ({name})"))
    cell = bench_cell(name)
    ms = time_calls(GAPCalculator(gap.model_, std=False), cell)
    ms_energy_std = time_calls(GAPCalculator(gap.model_, std="energy"), cell)
    ms_std = time_calls(GAPCalculator(gap.model_, std=True), cell)
    al = table["all"]
    ours = {
        "fit_s": fit_s,
        "rss_gb": rss_gb,
        "e": al["energy"]["rmse"],
        "f": al["forces"]["rmse"],
        "v": al["virial"]["rmse"],
        "ms": ms["median"],
        "ms_energy_std": ms_energy_std["median"],
        "ms_std": ms_std["median"],
    }
    peer = (
        live_peer(args.data, args.peer_dir, args.n_sparse, args.no_2b, test, cell)
        if args.peer
        else PEERS.get(name, {})
    )
    print(f"\ngap_fit figures: {'this run' if args.peer else 'shared/bench/peers.md'}")
    print("\n" + ratio_table(ours, peer, "gap_fit"))
    if name in ACE_JAX:
        goals = "goals: fit <= 150 s, E+F+S <= 7 ms"
        print(f"\nace-jax figures: shared/bench/peers.md ({goals})")
        print(ratio_table(ours, ACE_JAX[name], "ace-jax"))
    print(f"\n108-atom ms (median/min/max): {ms}")
    print(f"with energy stds: {ms_energy_std}; with all stds: {ms_std}")
    if device.platform != "cpu":  # arrays live in the device's memory, not in RSS
        stats = device.memory_stats() or {}
        ours["device_peak_gib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
        print(f"device peak memory: {ours['device_peak_gib']:.2f} GiB")
    print(f"test prediction: {sum(len(f.numbers) for f in test) / pred_s:.0f} atoms/s")
    print("timings per stage (s):", {k: round(v, 2) for k, v in gap.timings_.items()})
    if "hyperparameters" in gap.model_.info:
        print(format_report(gap.model_.info["hyperparameters"]))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": f"{device.platform} ({device.device_kind})",
                    "ours": ours,
                    "gap_fit": peer,
                    "ms": ms,
                    "ms_energy_std": ms_energy_std,
                    "ms_std": ms_std,
                    "errors": table,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
