"""Scaling of a dask-distributed fit: more atoms at a fixed number of sparse points.

    python benchmarks/bench_scaling.py --sizes 10000 30000 100000 [--workers 2]
    python benchmarks/bench_scaling.py --data ../shared/data/cu_emt --workers 2 --serial

``--sizes``: generates Cu–Au data of about that many atoms (seeded): fcc cells of 108
atoms with a random Au fraction, the lattice constant by Vegard's law (3.61 -> 4.08 Å),
strained by up to 1 % and rattled by 0.1 Å, labelled by ASE's EMT (energy, forces,
stress), plus the two isolated atoms, and ``--n-test`` more cells (another seed) as
a test set; ``--data DIR``: DIR/train.xyz and DIR/test.xyz instead. Each
data set is fitted with bench_fit.py's recipe (2-body + SOAP n_max 8, l_max 6, M CUR
points per species) on a fresh LocalCluster of ``--workers`` processes (one thread
each), and with ``--serial`` also in this process. Prints atoms, fit wall time, and
the peak RSS of each worker process and of this process (GiB), then the distributed
model's test errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

sys.path.insert(0, str(Path(__file__).parent))
from bench_fit import recipe  # noqa: E402

from gapfit.cluster import dask_client  # noqa: E402
from gapfit.data import config_sizes, read_frames  # noqa: E402
from gapfit.memory import peak_rss_gib  # noqa: E402
from gapfit.model import Model  # noqa: E402
from gapfit.report import error_table, format_error_table  # noqa: E402


def labelled(atoms: Atoms, config_type: str) -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.info["config_type"] = config_type
    return atoms


def cu_au_data(n_atoms: int, path: Path, seed: int = 0, isolated: bool = True) -> Path:
    """About ``n_atoms`` atoms of labelled Cu–Au cells (see above), written to path
    (once: an existing file is reused), with the isolated atoms first if asked."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    frames = [
        labelled(Atoms(s, [[5.0] * 3], cell=[10.0] * 3, pbc=True), "isolated_atom")
        for s in ("Cu", "Au")
        if isolated
    ]
    for _ in range(int(np.ceil(n_atoms / 108))):
        x_au = rng.uniform()
        atoms = bulk("Cu", "fcc", a=3.61 + 0.47 * x_au, cubic=True).repeat(3)
        atoms.numbers[rng.random(len(atoms)) < x_au] = 79
        eps = rng.uniform(-0.01, 0.01, (3, 3))
        strain = np.eye(3) + 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        frames.append(labelled(atoms, "bulk"))
    ase.io.write(path, frames)
    return path


def fit_row(train: Path, test: Path, args: argparse.Namespace) -> None:
    n_atoms = sum(config_sizes(train))
    with dask_client(n_workers=args.workers) as client:
        t0 = time.perf_counter()
        gap = recipe(args.n_sparse, chunk_atoms=args.chunk_atoms)
        gap.progress = False
        gap.fit(train, client=client)
        wall = time.perf_counter() - t0
    workers = " ".join(f"{v:.2f}" for v in gap.worker_memory_gib_.values())
    print(
        f"{n_atoms:>8} {args.workers:>7} {wall:>9.1f} {workers:>16} "
        f"{peak_rss_gib():>10.2f}  {gap.timings_}",
        flush=True,
    )
    frames = read_frames(test, require=())
    table = error_table(frames, gap.model_.predict(frames))
    print(format_error_table(table, f"test errors ({n_atoms} training atoms)"))
    if args.serial:
        t0 = time.perf_counter()
        serial = recipe(args.n_sparse, chunk_atoms=args.chunk_atoms)
        serial.progress = False
        serial.fit(train)
        wall = time.perf_counter() - t0
        print(
            f"{n_atoms:>8} {'serial':>7} {wall:>9.1f} {'-':>16} "
            f"{peak_rss_gib():>10.2f}  {serial.timings_}",
            flush=True,
        )
        print(compare(serial.model_, gap.model_, train), flush=True)


def compare(serial: Model, dist: Model, train: Path) -> str:
    """Sparse sets, weights and predictions (first 50 configurations) of two fits."""
    same = all(
        np.array_equal(a, b)
        for s, d in zip(serial.terms, dist.terms, strict=True)
        for a, b in zip(s.arrays().values(), d.arrays().values(), strict=True)
    )
    w, w_d = (np.asarray(m.posterior.weights) for m in (serial, dist))
    frames = read_frames(train, index=":50", require=())
    p, p_d = serial.predict(frames), dist.predict(frames)
    dE = max(
        abs(a["energy"] - b["energy"]) / len(a["forces"])
        for a, b in zip(p, p_d, strict=True)
    )
    dF = max(
        np.abs(a["forces"] - b["forces"]).max() for a, b in zip(p, p_d, strict=True)
    )
    return (
        f"sparse sets identical: {same}; max|w - w_dask| / max|w| "
        f"{np.abs(w - w_d).max() / np.abs(w).max():.1e} (cond R "
        f"{np.linalg.cond(np.asarray(serial.posterior.R)):.1e}); predictions of 50 "
        f"configs: max|dE| {dE:.1e} eV/atom, max|dF| {dF:.1e} eV/Å"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 30_000, 100_000])
    ap.add_argument("--data", type=Path, help="fit DIR/train.xyz instead")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-sparse", type=int, default=200, help="SOAP M per species")
    ap.add_argument("--chunk-atoms", type=int, default=512)
    ap.add_argument("--serial", action="store_true", help="also fit in this process")
    ap.add_argument("--n-test", type=int, default=20, help="test cells (108 atoms)")
    ap.add_argument("--out", type=Path, default=Path("bench_scaling_data"))
    args = ap.parse_args()
    print(
        f"{'atoms':>8} {'workers':>7} {'fit wall s':>9} {'worker RSS GiB':>16} "
        f"{'client GiB':>10}  stages (s)"
    )
    if args.data:
        fit_row(args.data / "train.xyz", args.data / "test.xyz", args)
        return
    args.out.mkdir(exist_ok=True)
    test = cu_au_data(
        108 * args.n_test, args.out / "cu_au_test.xyz", seed=1, isolated=False
    )
    for n in args.sizes:
        fit_row(cu_au_data(n, args.out / f"cu_au_{n}.xyz"), test, args)


if __name__ == "__main__":
    main()
