"""Pool-mode active learning: label the structures of a pool that the model is least
sure of (with random ones, by default), in batches, until a label budget or a target
std.

``learn_pool``: ``n_seed`` random pool structures are labelled first. Each
step scores every unlabelled structure (``score``, ``gapfit.selection``): by default
``environments``, the root of its summed local-energy DTC variances
(``selection.local_energy_variance``), or ``energy``, the DTC std of its energy
(``selection.energy_variance``). It stops at the label ``budget``, when no structure's
score per atom (the RMS local-energy std, or the energy std per atom; eV/atom) is
above ``target_std`` or when the pool is used up, and otherwise labels a batch by the
``strategy``: ``uncertainty``, a diverse batch of the most uncertain
(``selection.diverse_batch``); ``random``, a random batch (the baseline of a learning
curve); ``mixed`` (the default), half of each batch each way (with odd batch sizes
the random half is rounded down and up on alternate steps): the uncertain half finds
what the model lacks, the random half keeps the labels representative of the pool,
which uncertainty alone skews towards its most distorted structures; ``tournament``,
each structure of the batch the most uncertain of ``tournament_size`` drawn at random
from the unlabelled pool (tournament selection): the draws follow the pool, the
score tilts each towards what the model lacks, and a larger tournament tilts harder
(1: random batches; the whole pool: the most uncertain, without diversity). The labelled
structures' new sparse points are chosen for their forces (``sparse_force_std``).

The run's labels, model updates and checkpoints: ``gapfit.learner``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ase
import numpy as np
from ase.calculators.calculator import BaseCalculator
from tqdm.auto import tqdm

from gapfit import heldout
from gapfit.data import frames_from_atoms
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.learner import (
    Callback,
    Learner,
    bare_structure,
    base_settings,
    isolated_source,
    read_structures,
)
from gapfit.selection import (
    SCORES,
    STRATEGIES,
    diverse_batch,
    energy_prior,
    energy_variance,
    local_energy_variance,
    unit_mean_soap,
    unit_soap,
)
from gapfit.workdir import read_xyz_text

if TYPE_CHECKING:  # dask is imported only where labels go to a cluster
    from dask.distributed import Client


def learn_pool(
    workdir: str | os.PathLike,
    labeller: str | BaseCalculator | None,
    pool: str | os.PathLike | Sequence[ase.Atoms] | None = None,
    gap: GAP | None = None,
    test: str | os.PathLike | Sequence[ase.Atoms] | None = None,
    *,
    n_seed: int = 2,
    batch_size: int = 2,
    budget: int = 40,
    target_std: float | None = None,
    n_candidates: int | None = None,
    strategy: str = "mixed",
    tournament_size: int = 4,
    score: str = "environments",
    sparse_per_label: int = 20,
    sparse_tol: float = 1e-6,
    sparse_force_std: float | None = 0.002,
    refit_every: int = 20,
    seed: int = 1,
    labeller_kwargs: str | dict | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callback | None = None,
    extend: Mapping[str, Any] | None = None,
    client: Client | None = None,
) -> Learner:
    """Pool-mode active learning (see the module docstring).

    Args:
        workdir: directory of the run's outputs and checkpoint.
        labeller: ASE calculator, or ``emt``, ``lj``, ``module:Class``
            (``gapfit.labeller``) with ``labeller_kwargs``; on resume None means the
            one named at the start.
        pool: unlabelled structures (file or Atoms); not needed on resume.
        gap: model settings (a ``GAP``; its SOAP ``n_sparse`` is the most sparse
            points per element); default ``GAP(e0_method="average")``.
        test: labelled structures for the learning curve (optional).
        n_seed: random pool structures labelled first (on the EMT Cu pool of
            ``benchmarks/bench_learn.py``, with sparse points by local-energy
            residual, 2 gave lower test errors than 1 or 4 at every label count from
            8 to 80).
        batch_size: structures labelled per step. budget: labels in all.
        target_std: stop when no unlabelled structure's score per atom is above
            this (eV/atom; see the module docstring).
        n_candidates: most uncertain structures the diverse batch is chosen from
            (default ``max(10 batch_size, 20)``; with batches of two on the EMT Cu
            pool of ``benchmarks/bench_learn.py`` and sparse points by local-energy
            residual, 10 candidates gave higher mean test errors than 20 from 26
            labels on, and 60 up to 44 labels).
        strategy: "mixed", "tournament", "uncertainty" or "random" (the module
            docstring): the same model, seeds and stops, only the picks differ.
            On the EMT Cu benchmark (README, Active learning) mixed batches gave
            the lowest errors at the full budget, and on a pool made mostly of MD
            from 12 labels on; tournaments were lower up to 48 labels only on a
            pool of kinds in equal shares.
        tournament_size: structures drawn per pick by the ``tournament`` strategy
            (the module docstring; at least 1).
        score: "environments" or "energy" (the module docstring).
        sparse_force_std: new sparse points are chosen for the labelled structures'
            forces (``sparse_set.force_sparse``): each the environment whose point
            most lowers their summed force-residual variance, while some force
            component's residual std is above this (eV/Å), at most
            ``sparse_per_label`` per structure; None: those of largest local-energy
            residual above ``sparse_tol delta^2`` (``sparse_set.choose_sparse``; on
            the EMT Cu pool of ``benchmarks/bench_learn.py`` the forces' choice gave
            far lower test errors with few labels, for random batches as well).
        sparse_per_label, sparse_tol, refit_every: see ``gapfit.learner``.
        seed: seed of the first structures. resume: continue the run in ``workdir``.
        extend: on resume, new ``budget`` and ``target_std`` (eV/atom) for a run
            that stopped or is to go on further (``Learner.extend``).
        client: a ``dask.distributed.Client``: each batch is labelled at once on
            its workers (``gapfit.remote_labels``); None: one by one here.
        progress: progress bar. callback: called with an event dict after each step;
            an exception it raises stops the run (the checkpoint stays).

    Returns:
        The ``Learner`` (``learner.model``, ``learner.labelled``, ``learner.curve``).
    """
    if strategy not in STRATEGIES:
        raise GapfitError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}.")
    if tournament_size < 1:
        raise GapfitError(
            f"tournament_size {tournament_size}: draw at least 1 structure per pick."
        )
    if score not in SCORES:
        raise GapfitError(f"score {score!r}: use one of {', '.join(SCORES)}.")
    if resume:
        learner, _ = Learner.load(workdir, labeller, progress, callback, extend)
    else:
        if pool is None:
            raise GapfitError("learn_pool needs a pool of structures (pool=...).")
        images = read_structures(pool, "pool")
        species = {int(z) for a in images for z in a.numbers}
        settings = base_settings(
            "pool",
            labeller,
            labeller_kwargs,
            gap,
            species,
            n_seed=n_seed,
            batch_size=batch_size,
            budget=budget,
            target_std=target_std,
            n_candidates=n_candidates or max(10 * batch_size, 20),
            strategy=strategy,
            tournament_size=tournament_size,
            score=score,
            sparse_per_label=sparse_per_label,
            sparse_tol=sparse_tol,
            sparse_force_std=sparse_force_std,
            refit_every=refit_every,
            seed=seed,
        )
        inputs = {"pool.xyz": [bare_structure(a) for a in images]}
        learner = Learner.create(
            workdir, settings, labeller, inputs, test, progress, callback
        )
        learner.state = {"labelled": [], "failed": [], "step": 0}
    # the saved copy (positions to 1e-8 Å), as on resume: the same labels either way
    images = read_xyz_text(learner.workdir.read_text("pool.xyz"))
    learner.client = client
    _PoolRun(learner, images).run()
    return learner


class _PoolRun:
    """The steps of pool mode over cached pool descriptors."""

    def __init__(self, learner: Learner, images: list[ase.Atoms]) -> None:
        self.learner = learner
        self.images = images
        frames = frames_from_atoms(images, require=(), source="pool")
        self.env = unit_soap(learner.gap, learner.species, frames)
        soaps = {n: v for n, v in learner.specs.items() if n in self.env.X_hat}
        self.S_hat = unit_mean_soap(soaps, self.env)
        self.n_atoms = np.array([len(a) for a in images])
        # runs from before the score was a setting used the energy score
        self.score = learner.settings.get("score", "energy")
        if self.score == "energy":
            self.prior = energy_prior(soaps, self.env)

    def run(self) -> None:
        L, st, cfg = self.learner, self.learner.state, self.learner.settings
        if "done" in st:
            return
        bar = tqdm(
            total=cfg["budget"],
            initial=len(L.labelled),
            unit="label",
            desc="learn (pool)",
            disable=not L.progress,
        )
        if not L.labelled:
            rng = np.random.default_rng(cfg["seed"])
            n = min(cfg["n_seed"], len(self.images))
            seeds = np.sort(rng.choice(len(self.images), n, replace=False))
            self.step([int(i) for i in seeds], L.isolated_atoms(), None, bar)
        while True:
            if len(L.labelled) >= cfg["budget"]:
                reason = f"label budget {cfg['budget']} reached"
                break
            u, per_atom = self.uncertainty()
            if not np.isfinite(u).any():
                reason = "pool exhausted"
                break
            largest = float(per_atom.max())
            if cfg["target_std"] is not None and largest <= cfg["target_std"]:
                reason = f"largest {self.score} std {largest:.3g} eV/atom <= target"
                break
            n_pick = min(cfg["batch_size"], cfg["budget"] - len(L.labelled))
            batch = self.batch(u, n_pick)
            if len(batch) == 0:
                reason = "no candidate differs from the labelled structures"
                break
            self.step([int(i) for i in batch], [], largest, bar)
        bar.close()
        L.finish(reason)

    def batch(self, u: np.ndarray, n_pick: int) -> np.ndarray:
        """The next batch of at most ``n_pick`` pool indices for the scores ``u``
        (-inf: not to pick), by the run's strategy (the module docstring)."""
        cfg, st = self.learner.settings, self.learner.state
        rng = np.random.default_rng([cfg["seed"], st["step"]])
        if cfg["strategy"] == "tournament":
            left = np.flatnonzero(np.isfinite(u))
            size = cfg["tournament_size"]
            drawn = rng.choice(left, min(size * n_pick, len(left)), replace=False)
            groups = [g for g in np.array_split(drawn, n_pick) if len(g)]
            return np.array([g[np.argmax(u[g])] for g in groups], dtype=np.int64)
        n_random = {"uncertainty": 0, "random": n_pick}.get(
            cfg["strategy"],
            (n_pick + st["step"] % 2) // 2,  # mixed: half, alternating
        )
        picks = np.zeros(0, np.int64)
        if n_pick > n_random:
            kernel = self.learner.specs["soap"][1]
            picks = diverse_batch(
                u,
                self.S_hat,
                kernel,
                n_pick - n_random,
                cfg["n_candidates"],
                st["labelled"],
            )
        if n_random:
            left = np.setdiff1d(np.flatnonzero(np.isfinite(u)), picks)
            drawn = rng.choice(left, min(n_random, len(left)), replace=False)
            picks = np.concatenate([picks, drawn]).astype(np.int64)
        return picks

    def uncertainty(self) -> tuple[np.ndarray, np.ndarray]:
        """Each pool structure's score (eV) and score per atom (eV/atom; the module
        docstring); -inf for labelled and failed ones."""
        model, n = self.learner.model, len(self.images)
        if self.score == "environments":
            var = local_energy_variance(model, self.env)
            u = np.sqrt(np.bincount(self.env.owner, np.maximum(var, 0.0), n))
            per_atom = u / np.sqrt(self.n_atoms)  # RMS local-energy std
        else:
            var = energy_variance(model, self.env, self.prior)
            u = np.sqrt(np.maximum(var, 0.0))
            per_atom = u / self.n_atoms
        st = self.learner.state
        u[st["labelled"] + st["failed"]] = -np.inf
        per_atom[st["labelled"] + st["failed"]] = -np.inf
        return u, per_atom

    def step(
        self, picks: list[int], extra: list[ase.Atoms], max_std, bar: tqdm
    ) -> None:
        L, st = self.learner, self.learner.state
        structures = [self.images[i] for i in picks] + extra
        sources = [f"pool:{i}" for i in picks] + [isolated_source(a) for a in extra]
        done = L.label(structures, sources)
        ok = [picks[k] for k, _ in done if k < len(picks)]
        st["failed"] += sorted(set(picks) - set(ok))
        st["labelled"] += ok
        new = [a for _, a in done]
        if L.model is not None and new:  # held out: predicted before the labels
            preds = L.model.predict(new, std=True, shape=L.shape)  # one compilation
            for atoms, pred in zip(new, preds, strict=True):
                heldout.record(atoms, pred, len(L.labelled), L.std_units)
        mask = np.isin(self.env.owner, ok)
        # pool environments come from the cache; isolated atoms are no candidates
        std = L.settings.get("sparse_force_std")  # runs from before it: None
        target = None if std is None else std**2
        L.add(new, self.env.take(mask), force_target=target)
        st["step"] += 1
        row = L.record(step=st["step"], max_std=max_std)
        L.checkpoint()
        bar.update(len(new))
        bar.set_postfix(
            {k: f"{row[k]:.3g}" for k in ("max_std", "f_rmse") if row.get(k)}
        )
        if L.callback is not None:
            L.callback({"event": "step", "mode": "pool", "picked": picks, "row": row})
