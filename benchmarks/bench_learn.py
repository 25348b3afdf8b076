"""Active learning against random selection on a generated EMT Cu pool, and the cost
of a cheap update against a full refit.

Learning curves: for each seed, ``gapfit.learn.learn_pool`` with ``--strategy``
(``mixed``, the default of ``learn_pool``, ``tournament`` with ``--tournament-size``,
or ``uncertainty``) and with
``strategy="random"`` (same model, seeds, batch size and sparse-set growth; only the
choice of structures differs) on one pool, with the test force RMSE after every step.
Printed: both curves per seed, per seed the fewest labels with which
active learning reaches random's test force RMSE at the full budget, and the mean
curves with, for every N, the fewest labels with which the mean active-learning curve
reaches the mean random RMSE at N labels (the ratio to N; the floor asks for <= 1/3).
``--score`` picks the pool score (``gapfit.selection``). After each run: the coverage
of the test set's force components by the central 68 % and 95 % intervals of the
saved model's DTC and calibrated stds (5-fold cross-validation of the run's labels),
and the saved model's test force RMSE over each kind of structure.

Pool and test set (independent draws): 32-atom fcc cells, strained (2 %) and rattled
(0.02-0.15 Å); the same with one or two vacancies; 16-atom (100) and (111) slabs with
6 Å of vacuum, rattled; snapshots of EMT Langevin MD of a 32-atom cell at
800-1600 K (ten per trajectory, 40 fs apart). Labels from ASE's EMT. By default a
fifth of each kind; ``--md-fraction`` (pool) and ``--test-md-fraction`` (test set) give
the fraction of MD snapshots instead, the rest shared equally by the other kinds: a
pool made mostly of MD, as pools cheaply made are, with a test set of every kind.

``--oracle K`` replaces the active-learning arm by a test-set oracle, a bound on what
any rule choosing from the pool could do here, not a strategy a user can run: each
batch is the ``--batch-size`` best of K unlabelled structures drawn at random, ranked
by the true test force RMSE of the current model updated with each one alone (EMT
labels, ``update.update``, no new sparse points); the loop then adds them as pool mode
does (labels, sparse points, refits).

Update timing (``--timing-frames N``): a model fitted to N rattled 108-atom cells with
``--timing-sparse`` SOAP sparse points (CUR), then ``update.update`` with one more
108-atom frame against ``update.refit`` on all N + 1 frames, each timed after a
compiling warm-up call (median of 3).

    python benchmarks/bench_learn.py --pool-size 1000 --n-test 40 --budget 80 \
        --batch-size 2 --seeds 1 2 3 --optimise-hyperparameters --refit-every 10
    python benchmarks/bench_learn.py ... --oracle 10
    python benchmarks/bench_learn.py ... --md-fraction 0.9
    python benchmarks/bench_learn.py --skip-curves --timing-frames 20
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import jax
import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

from gapfit import GAP
from gapfit.calibration import std_samples
from gapfit.data import frames_from_atoms
from gapfit.labeller import label
from gapfit.learn import learn_pool
from gapfit.model import Model
from gapfit.pool_mode import _PoolRun
from gapfit.samplers import thermalize_momenta
from gapfit.selection import SCORES, STRATEGIES
from gapfit.uncertainty import metrics
from gapfit.update import refit, update

SOAP = "cutoff=4.5 cutoff_transition_width=1.0 n_max=5 l_max=4 n_sparse=150"


def _rattled(atoms: Atoms, rng: np.random.Generator, lo: float, hi: float) -> Atoms:
    atoms = atoms.copy()
    atoms.positions += rng.normal(0.0, rng.uniform(lo, hi), atoms.positions.shape)
    return atoms


def _strained(atoms: Atoms, rng: np.random.Generator, std: float) -> Atoms:
    eps = rng.normal(0.0, std, (3, 3))
    atoms = atoms.copy()
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
    )
    return atoms


def _hot(n: int, rng: np.random.Generator) -> list[Atoms]:
    """``n`` snapshots of EMT Langevin MD of a 32-atom cell at 800-1600 K."""
    out = []
    while len(out) < n:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.calc = EMT()
        temperature = rng.uniform(800.0, 1600.0)
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        dyn = Langevin(
            atoms,
            2 * units.fs,
            temperature_K=temperature,
            friction=0.02,
            fixcm=False,
            rng=rng,
        )
        dyn.run(100)  # equilibrate
        for _ in range(min(10, n - len(out))):
            dyn.run(20)
            snap = atoms.copy()
            snap.calc = None
            out.append(snap)
    return out


KINDS = ("bulk", "vacancy", "slab100", "slab111", "hot MD")  # cu_structures' kinds


def cu_structures(
    n: int, seed: int, md_fraction: float = 0.2
) -> tuple[list[Atoms], list[str]]:
    """``n`` varied Cu structures (see the module docstring), in random order, and
    the kind (``KINDS``) of each: a fraction ``md_fraction`` of hot MD snapshots and
    the rest shared equally by the other four kinds (0.2: a fifth of each kind)."""
    rng = np.random.default_rng(seed)
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    k = round(n * (1.0 - md_fraction) / 4)
    out = [_rattled(_strained(cell, rng, 0.02), rng, 0.02, 0.15) for _ in range(k)]
    for _ in range(k):
        atoms = _strained(cell, rng, 0.01)
        del atoms[list(rng.choice(len(atoms), rng.integers(1, 3), replace=False))]
        out.append(_rattled(atoms, rng, 0.02, 0.1))
    for make in (fcc100, fcc111):
        slab = make("Cu", (2, 2, 4), a=3.61, vacuum=6.0, periodic=True)
        out += [_rattled(slab, rng, 0.02, 0.1) for _ in range(k)]
    out += _hot(n - len(out), rng)
    kinds = [KINDS[min(i // k, 4)] if k else KINDS[4] for i in range(len(out))]
    for atoms in out:
        atoms.info = {}  # no slab metadata (adsorbate_info) in the extxyz copies
    order = rng.permutation(len(out))
    return [out[i] for i in order], [kinds[i] for i in order]


def force_rmse_by_kind(
    model: Model, test: list[Atoms], kinds: list[str]
) -> dict[str, float]:
    """A model's test force RMSE (meV/Å) over the structures of each kind."""
    errors: dict[str, list] = {}
    for atoms, kind, pred in zip(test, kinds, model.predict(test), strict=True):
        errors.setdefault(kind, []).append(pred["forces"] - atoms.get_forces())
    return {
        k: 1e3 * float(np.sqrt(np.mean(np.concatenate(errors[k]) ** 2)))
        for k in KINDS
        if k in errors
    }


def force_std_coverage(model: Model, frames: list) -> dict[str, str]:
    """A model's force-component std coverage of the 68 and 95 % intervals on the
    test frames: DTC and (for a calibrated model) calibrated."""
    samples = std_samples(model, frames, model.predict(frames, std=True))
    out = {}
    for kind, s in samples.items():
        m = metrics("forces", s["forces"].error, s["forces"].std)
        out[kind] = f"{m['coverage_68']:.2f} / {m['coverage_95']:.2f}"
    return out


def oracle_batch(test: list[Atoms], k: int):
    """Pool mode's batch rule replaced by the test-set oracle (module docstring), for
    the labelled ``test`` structures and ``k`` candidates per step."""
    forces = np.concatenate([a.get_forces() for a in test])

    def batch(run: _PoolRun, u: np.ndarray, n_pick: int) -> np.ndarray:
        L, st = run.learner, run.learner.state
        rng = np.random.default_rng([L.settings["seed"], st["step"], 7])
        left = np.flatnonzero(np.isfinite(u))
        candidates = rng.choice(left, min(k, len(left)), replace=False)
        rmse = []
        for i in candidates:
            model = update(
                L.model, [label(EMT(), run.images[i])], chunk_atoms=1, shape=L.shape
            )
            pred = np.concatenate([p["forces"] for p in model.predict(test)])
            rmse.append(np.sqrt(np.mean((pred - forces) ** 2)))
        return candidates[np.argsort(rmse)[:n_pick]].astype(np.int64)

    return batch


def curves(args: argparse.Namespace) -> None:
    pool, _ = cu_structures(args.pool_size, 100, args.md_fraction)
    test, test_kinds = cu_structures(args.n_test, 200, args.test_md_fraction)
    test = [label(EMT(), s) for s in test]
    test_frames = frames_from_atoms(test, require=("forces",), source="test")
    gap = GAP(
        soap=args.soap,
        e0_method=args.e0_method,
        optimise_hyperparameters=args.optimise_hyperparameters,
    )
    al = "oracle" if args.oracle else args.strategy  # the active-learning arm
    rows: dict[str, dict[int, list]] = {al: {}, "random": {}}
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_learn_"))
    per_seed: dict[int, dict] = {}
    for seed in args.seeds:
        for strategy in rows:
            t0 = time.perf_counter()
            oracle = strategy == "oracle"
            with (
                mock.patch.object(_PoolRun, "batch", oracle_batch(test, args.oracle))
                if oracle
                else contextlib.nullcontext()
            ):
                learner = learn_pool(
                    root / f"{strategy}_{seed}",
                    "emt",
                    pool,
                    gap,
                    test,
                    n_seed=args.n_seed,
                    batch_size=args.batch_size,
                    budget=args.budget,
                    seed=seed,
                    strategy="uncertainty" if oracle else strategy,
                    tournament_size=args.tournament_size,
                    score=args.score,
                    refit_every=args.refit_every,
                    progress=False,
                )
            seconds = time.perf_counter() - t0
            model = Model.load(learner.workdir.file("model.npz"))
            coverage = force_std_coverage(model, test_frames)
            by_kind = force_rmse_by_kind(model, test, test_kinds)
            # every run compiles its own programs (shapes of its frames); each
            # executable holds memory maps, and a dozen runs in one process can pass
            # Linux's 65,530 (vm.max_map_count: LLVM "Unable to allocate section
            # memory"); the runs share nothing, so drop them
            jax.clear_caches()
            for r in learner.curve:
                rows[strategy].setdefault(r["n_labels"], []).append(r["f_rmse"])
            per_seed.setdefault(seed, {})[strategy] = learner.curve
            print(
                f"seed {seed} {strategy:>11}: {len(learner.labelled)} labels, "
                f"{learner.n_sparse} sparse points, {seconds:.0f} s; test F RMSE "
                + " ".join(f"{r['f_rmse']:.1f}" for r in learner.curve)
                + "\n  test F std coverage 68 / 95 %: "
                + ", ".join(f"{k} {v}" for k, v in coverage.items())
                + "\n  test F RMSE by kind (meV/Å): "
                + ", ".join(f"{k} {v:.1f}" for k, v in by_kind.items())
            )
    for seed, runs in per_seed.items():
        target = runs["random"][-1]
        first = next((r for r in runs[al] if r["f_rmse"] <= target["f_rmse"]), None)
        print(
            f"seed {seed}: random {target['f_rmse']:.1f} meV/Å at "
            f"{target['n_labels']} labels; active learning "
            + (
                f"{first['f_rmse']:.1f} at {first['n_labels']} labels: ratio "
                f"{first['n_labels'] / target['n_labels']:.2f}"
                if first
                else "never as low"
            )
        )
    print(f"\nmean test force RMSE (meV/Å) over seeds {args.seeds}")
    print(
        f"{'labels N':>8} {al:>12} {'random':>9}"
        f" {'AL labels to reach random at N':>31} {'ratio':>6}"
    )
    labels = sorted(set(rows[al]) & set(rows["random"]))
    mean = {s: {n: statistics.mean(rows[s][n]) for n in labels} for s in rows}
    for N in labels:
        reached = [n for n in labels if mean[al][n] <= mean["random"][N]]
        need = f"{reached[0]:>31} {reached[0] / N:>6.2f}" if reached else f"{'-':>31}"
        print(f"{N:>8} {mean[al][N]:>12.2f} {mean['random'][N]:>9.2f} {need}")
    if args.plot:
        from gapfit.plots import _figure, _save, log_log

        fig, (ax,) = _figure(1)
        for s in rows:
            ax.plot(labels, [mean[s][n] for n in labels], "o-", label=s)
        log_log(ax)
        ax.set_xlabel("labelled structures")
        ax.set_ylabel("test force RMSE (meV/Å)")
        ax.legend()
        _save(fig, Path(args.plot))
        print(f"wrote {args.plot}")
    print(f"runs in {root}")


def _timed(fn) -> float:
    fn()  # compile
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timing(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(7)
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)  # 108 atoms
    frames = [
        label(EMT(), _rattled(cell, rng, 0.05, 0.15))
        for _ in range(args.timing_frames + 1)
    ]
    soap = f"cutoff=5.0 n_max=6 l_max=4 n_sparse={args.timing_sparse}"
    t0 = time.perf_counter()
    model = GAP(soap=soap, e0_method="average").fit(frames[:-1]).model_
    print(
        f"fit: {args.timing_frames} x 108 atoms, M = "
        f"{model.term('soap').n_sparse}: {time.perf_counter() - t0:.1f} s"
    )
    one = _timed(lambda: update(model, frames[-1:], chunk_atoms=108))
    full = _timed(lambda: refit(model, frames, chunk_atoms=108))
    print(
        f"update with one 108-atom frame: {one * 1e3:.0f} ms; full refit on "
        f"{len(frames)} frames: {full * 1e3:.0f} ms; ratio {full / one:.1f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument(
        "--md-fraction",
        type=float,
        default=0.2,
        help="fraction of hot MD snapshots in the pool, the rest shared equally by "
        "the other kinds",
    )
    p.add_argument(
        "--test-md-fraction",
        type=float,
        default=0.2,
        help="the same for the test set",
    )
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--budget", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument(
        "--n-seed", type=int, default=2, help="random structures labelled first"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument(
        "--e0-method",
        default="average",
        choices=("average", "isolated"),
        help="isolated: EMT labels one isolated atom after the first structures "
        "(one label of the budget)",
    )
    p.add_argument("--score", default="environments", choices=SCORES)
    p.add_argument(
        "--strategy",
        default="mixed",
        choices=[s for s in STRATEGIES if s != "random"],
        help="the active-learning arm, against random batches",
    )
    p.add_argument(
        "--tournament-size",
        type=int,
        default=4,
        help="structures drawn per pick by --strategy tournament",
    )
    p.add_argument(
        "--oracle",
        type=int,
        default=0,
        metavar="K",
        help="the active-learning arm is the test-set oracle with K candidates",
    )
    p.add_argument("--soap", default=SOAP)
    p.add_argument(
        "--optimise-hyperparameters",
        action="store_true",
        help="re-choose delta and the sigmas by the evidence at each scheduled refit",
    )
    p.add_argument("--refit-every", type=int, default=20, help="labels per refit")
    p.add_argument("--workdir", default=None)
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--skip-curves", action="store_true")
    p.add_argument("--timing-frames", type=int, default=0)
    p.add_argument("--timing-sparse", type=int, default=500)
    args = p.parse_args()
    for name in ("md_fraction", "test_md_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must lie in [0, 1]")
    if not args.skip_curves:
        curves(args)
    if args.timing_frames:
        timing(args)


if __name__ == "__main__":
    main()
