"""Hyperparameters by evidence: ``delta`` of every term and noise factors per group.

``GAP(..., optimise_hyperparameters=True)`` (``gapfit fit --optimise-hyperparameters``)
maximises the DTC evidence of ``gapfit.evidence`` over ``log delta_t`` of each term and
``log s_g`` of each noise group, where the noise std of an observation is ``s_g`` times
its configured sigma (``default_sigma``, ``config_type_sigma``, ``sigma_per_atom``).
Groups are the quantities (energy, force, virial), or with ``"per_config_type"`` each
quantity of each config_type. Observations with their own per-configuration sigma
(info ``energy_sigma``, ...) are used as given (never rescaled), so that the final
settings reproduce the model in a fit without optimisation.

One streamed pass (``assembly.scaled_chunks``) folds each group's rows into its own
triangular factor; L-BFGS-B (scipy) then works on O(G M^3) evaluations with JAX
gradients in log space (positive parameters, factors within ``1e-4 .. 1e4`` of the
initial values, and delta small enough that ``sparse_jitter`` keeps ``K_mm``
numerically positive definite), and the weights at the optimum come from the same
factors, whitened as a whole (``sparse_gp.whitened``; weights agree with a refit at
the chosen values to about 1e-7 relative, predictions closer).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from gapfit.assembly import scaled_chunks
from gapfit.data import Frame, Sigmas
from gapfit.errors import GapfitError
from gapfit.evidence import Statistics, data_factor, evidence_and_gradient
from gapfit.model import Model
from gapfit.neighbours import Batch
from gapfit.sparse_gp import empty_factor, fold, prior_factor, solve, whitened
from gapfit.terms import block_K_mm

QUANTITIES = ("energy", "force", "virial")
FIXED = "fixed"  # observations with their own per-configuration sigma
MODES = {True: "quantity", "quantity": "quantity", "per_config_type": "per_config_type"}
BOUND = float(np.log(1e4))  # |log(value / initial value)| <= BOUND
JITTER_FLOOR = 1e-12  # sparse_jitter / delta^2 stays above this (see delta_bounds)
MAX_ITERATIONS = 200
FTOL, GTOL = 1e-10, 1e-5  # L-BFGS-B stops on these changes of -log p(y) / n
STEP_TOL = 1e-3  # a quasi-Newton step below this in every log factor: converged


def optimise_mode(value: bool | str | None) -> str | None:
    """``None`` (no optimisation), ``"quantity"`` or ``"per_config_type"``."""
    if value is None or value is False:
        return None
    if isinstance(value, bool | str) and value in MODES:
        return MODES[value]
    raise GapfitError(
        f"optimise_hyperparameters={value!r}: give False, True (one noise factor per "
        "quantity) or 'per_config_type' (one per quantity and config_type)."
    )


@dataclasses.dataclass(frozen=True)
class NoiseGroups:
    """Groups of observations sharing one noise factor ``s_g``: ``(quantity,
    config_type or None for all)`` pairs, then the ``FIXED`` group last."""

    keys: tuple[tuple[str, str | None], ...]
    per_config_type: bool

    @classmethod
    def of(cls, frames: Sequence[Frame], per_config_type: bool) -> NoiseGroups:
        types = sorted({f.config_type for f in frames}) if per_config_type else [None]
        keys = [(q, t) for q in QUANTITIES for t in types]
        return cls((*keys, (FIXED, None)), per_config_type)

    @property
    def names(self) -> tuple[str, ...]:
        """``"energy"``, ``"force"``, ... or ``"force[bulk]"``, ...; ``"fixed"``."""
        return tuple(q if t is None else f"{q}[{t}]" for q, t in self.keys)

    def index(self, frame: Frame, quantity: str) -> int:
        own = {
            "energy": frame.sigma_energy,
            "force": frame.sigma_force,
            "virial": frame.sigma_virial,
        }[quantity]
        if own is not None:
            return len(self.keys) - 1
        ct = frame.config_type if self.per_config_type else None
        return self.keys.index((quantity, ct))

    def rows(
        self, frames: Sequence[Frame], sigmas: Sigmas, C: int, A: int
    ) -> tuple[np.ndarray, float]:
        """Group of each row of ``assembly.scaled_rows`` for a chunk padded to ``C``
        configurations and ``A`` atoms (``(C + 3A + 6C,)``, -1: no observation), and
        the sum of ``log sigma_i^2`` over its observations."""
        ids = np.full(C + 3 * A + 6 * C, -1)
        log_var, a0 = 0.0, 0
        for c, f in enumerate(frames):
            n = len(f.numbers)
            s_e, s_f, s_w = sigmas.for_frame(f)
            if f.energy is not None:
                ids[c] = self.index(f, "energy")
                log_var += 2.0 * np.log(s_e)
            fitted = f.fitted_atoms()
            if fitted.size:
                rows = C + 3 * (a0 + fitted[:, None]) + np.arange(3)
                ids[rows.ravel()] = self.index(f, "force")
                log_var += 3 * fitted.size * 2.0 * np.log(s_f)
            if f.virial is not None:
                ids[C + 3 * A + 6 * c : C + 3 * A + 6 * (c + 1)] = self.index(
                    f, "virial"
                )
                log_var += 6 * 2.0 * np.log(s_w)
            a0 += n
        return ids, log_var


def statistics(
    model: Model,
    frames: Sequence[Frame],
    chunks: Sequence[Sequence[int]],
    batches: Sequence[Batch],
    sigmas: Sigmas,
    groups: NoiseGroups,
    K_mm: Any,
    progress: bool = False,
) -> Statistics:
    """One streamed pass: each group's rows folded into its factor ``R_g``.

    Args:
        model: terms at the initial delta (no posterior needed).
        K_mm: (M, M) eV^2 block-diagonal sparse covariance at the initial delta,
            without jitter.
    """
    M = K_mm.shape[0]
    R = [empty_factor(M) for _ in groups.names]
    n = np.zeros(len(groups.names), np.int64)
    log_var = 0.0
    for (A_rows, b), chunk, batch in zip(
        scaled_chunks(model, frames, chunks, batches, sigmas, progress),
        chunks,
        batches,
        strict=True,
    ):
        C, A = batch.config_mask.shape[0], batch.atom_mask.shape[0]
        ids, lv = groups.rows([frames[k] for k in chunk], sigmas, C, A)
        log_var += lv
        n += np.bincount(ids[ids >= 0], minlength=len(n))
        # energies, forces, virials are contiguous blocks of rows: fold each block
        # (fixed shapes, one compilation each) once per group present in it
        for lo, hi in ((0, C), (C, C + 3 * A), (C + 3 * A, A_rows.shape[0])):
            block_ids = ids[lo:hi]
            for g in np.unique(block_ids[block_ids >= 0]):
                mask = (block_ids == g).astype(float)
                R[g] = _fold_group(R[g], A_rows, b, mask, lo, hi)
    term = np.repeat(np.arange(len(model.terms)), [t.n_sparse for t in model.terms])
    return Statistics(
        jnp.stack(R), jnp.asarray(K_mm), jnp.asarray(term), jnp.asarray(n), log_var
    )


@partial(jax.jit, static_argnums=(4, 5))
def _fold_group(
    R: jax.Array, A: jax.Array, b: jax.Array, mask: jax.Array, lo: int, hi: int
) -> jax.Array:
    """``fold`` of the rows ``lo:hi`` of ``A``, ``b`` where ``mask`` is 1."""
    return fold(R, A[lo:hi] * mask[:, None], b[lo:hi] * mask)


@dataclasses.dataclass(frozen=True)
class Optimum:
    """Result of ``maximise``: log factors relative to the initial values."""

    log_a: np.ndarray  # (T,) log(delta / delta0) per term
    log_s: np.ndarray  # (G,) log noise factor per group (0 where not free)
    initial: float  # log evidence at the initial values, nats
    final: float  # at the optimum, nats
    iterations: int
    evaluations: int
    converged: bool  # L-BFGS-B's own test, or a remaining step below STEP_TOL
    message: str
    at_bound: tuple[int, ...]  # indices into (log_a, free log_s) at a search bound
    gradient: float  # largest |d log p(y) / d log factor| inside the bounds, nats
    step: float  # largest log factor change of L-BFGS-B's quasi-Newton step from there


def maximise(stats: Statistics, jitter: float) -> Optimum:
    """Maximise the evidence over ``log delta`` of every term and ``log s`` of every
    group with observations (except ``FIXED``, the last group), by L-BFGS-B on
    ``-log p(y) / n`` and its JAX gradient. Groups without observations are left out
    of the evaluations (their factors stay 1)."""
    T, G = int(np.max(np.asarray(stats.term))) + 1, stats.R.shape[0]
    n = np.asarray(stats.n)
    used = np.flatnonzero(n > 0)
    free = used[used < G - 1]  # positions in the full (G,) vector
    free_in_used = np.flatnonzero(used < G - 1)
    if len(used) == 0:
        raise GapfitError("no observations to fit the hyperparameters to.")
    reduced = stats._replace(R=stats.R[used], n=stats.n[used])
    n_obs = float(n.sum())

    def unpack(x: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        log_s = np.zeros(len(used))
        log_s[free_in_used] = x[T:]
        return jnp.asarray(x[:T]), jnp.asarray(log_s)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, (g_a, g_s) = evidence_and_gradient(*unpack(x), reduced, jitter)
        grad = np.concatenate([np.asarray(g_a), np.asarray(g_s)[free_in_used]])
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            raise GapfitError(
                "the evidence is not finite at delta factors "
                f"{np.exp(x[:T]).tolist()}, noise factors {np.exp(x[T:]).tolist()}: "
                "K_mm is not positive definite (duplicate sparse points?); raise "
                "--sparse-jitter (e.g. 1e-6)."
            )
        return -float(value) / n_obs, -grad / n_obs

    x0 = np.zeros(T + len(free))
    initial = -objective(x0)[0] * n_obs
    bounds = [(-BOUND, b) for b in delta_bounds(stats, jitter, T)]
    bounds += [(-BOUND, BOUND)] * len(free)
    res = scipy.optimize.minimize(
        objective,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": MAX_ITERATIONS, "ftol": FTOL, "gtol": GTOL},
    )
    log_s = np.zeros(G)
    log_s[free] = res.x[T:]
    lo, hi = np.array(bounds).T
    at_lo, at_hi = res.x < lo + 1e-6, res.x > hi - 1e-6
    # the objective's gradient, less what pushes against a bound, in nats
    inward = np.where((at_lo & (res.jac > 0)) | (at_hi & (res.jac < 0)), 0.0, res.jac)
    gradient = float(np.max(np.abs(inward), initial=0.0)) * n_obs
    step = np.where(at_lo | at_hi, 0.0, res.hess_inv.matvec(inward))
    step = float(np.max(np.abs(step), initial=0.0))
    return Optimum(
        np.asarray(res.x[:T]),
        log_s,
        initial,
        -float(res.fun) * n_obs,
        int(res.nit),
        int(res.nfev),
        bool(res.success) or step < STEP_TOL,
        str(res.message).rstrip(": "),
        tuple(np.flatnonzero(at_lo | at_hi).tolist()),
        gradient,
        step,
    )


def delta_bounds(stats: Statistics, jitter: float, T: int) -> list[float]:
    """Upper bounds of ``log(delta / delta0)`` per term: ``BOUND``, or lower where
    ``sparse_jitter`` (absolute, eV^2) would fall below ``JITTER_FLOOR`` times the
    term's largest prior variance, i.e. where ``K_mm + jitter I`` stops being
    numerically positive definite for coincident sparse points."""
    diag = np.asarray(jnp.diag(stats.K_mm))
    term = np.asarray(stats.term)
    out = []
    for t in range(T):
        top = float(diag[term == t].max())
        if jitter > 0 and top > 0:
            out.append(
                min(BOUND, max(0.0, 0.5 * np.log(jitter / (JITTER_FLOOR * top))))
            )
        else:
            out.append(BOUND)
    return out


def optimised_model(
    model: Model, stats: Statistics, opt: Optimum, jitter: float
) -> Model:
    """The model at the optimum: terms with the new delta, weights by the fit's QR."""
    terms = tuple(
        dataclasses.replace(
            t, kernel=dataclasses.replace(t.kernel, delta=t.kernel.delta * float(f))
        )
        for t, f in zip(model.terms, np.exp(opt.log_a), strict=True)
    )
    K_mm = block_K_mm(terms)
    R_data = data_factor(jnp.asarray(opt.log_a), jnp.asarray(opt.log_s), stats, jitter)
    L = prior_factor(K_mm, jitter)
    posterior = solve(whitened(R_data, L), L)
    return dataclasses.replace(model, terms=terms, posterior=posterior, info={})


def settings_at(
    model: Model,
    groups: NoiseGroups,
    log_s: np.ndarray | None,
    default_sigma: Sequence[float],
    config_type_sigma: Mapping[str, Sequence[float]] | None,
) -> dict[str, Any]:
    """Each term's ``delta`` and the ``default_sigma`` and ``config_type_sigma``
    settings with the noise factors ``exp(log_s) (G,)`` applied (None: the settings
    as given), in the form of the ``GAP`` arguments."""
    default = [float(v) for v in default_sigma]
    per_type = {k: [float(x) for x in v] for k, v in (config_type_sigma or {}).items()}
    scale = np.exp(np.zeros(len(groups.keys)) if log_s is None else log_s)
    if groups.per_config_type:
        for k, (q, ct) in enumerate(groups.keys[:-1]):
            if log_s is not None and scale[k] != 1.0:
                values = per_type.setdefault(ct, default[:3])
                values[QUANTITIES.index(q)] *= float(scale[k])
    else:
        for k in range(len(QUANTITIES)):
            default[k] *= float(scale[k])
            for values in per_type.values():
                values[k] *= float(scale[k])
    return {
        "delta": {t.name: float(t.kernel.delta) for t in model.terms},
        "default_sigma": default,
        "config_type_sigma": per_type,
    }


def report(
    opt: Optimum,
    groups: NoiseGroups,
    stats: Statistics,
    initial: dict[str, Any],
    final: dict[str, Any],
) -> dict[str, Any]:
    """The ``model.info["hyperparameters"]`` record (JSON-ready)."""
    n = np.asarray(stats.n)
    free = [g for k, g in enumerate(groups.names[:-1]) if n[k] > 0]
    names = list(final["delta"]) + [f"sigma {g}" for g in free]
    return {
        "method": "DTC log marginal likelihood (evidence), L-BFGS-B in log space",
        "groups": "per_config_type" if groups.per_config_type else "quantity",
        "initial": {**initial, "log_evidence": opt.initial},
        "final": {**final, "log_evidence": opt.final},
        "noise_factor": {
            g: float(np.exp(opt.log_s[k])) for k, g in enumerate(groups.names[:-1])
        },
        "observations": {g: int(n[k]) for k, g in enumerate(groups.names)},
        "iterations": opt.iterations,
        "evaluations": opt.evaluations,
        "converged": opt.converged,
        "message": opt.message,
        "gradient": opt.gradient,
        "step": opt.step,
        "at_bound": [names[k] for k in opt.at_bound],
    }


class Optimised(NamedTuple):
    """The outcome of ``optimise``."""

    model: Model  # terms at the chosen delta, posterior solved
    initial: dict[str, Any]  # settings_at the start
    final: dict[str, Any]  # settings_at the optimum (GAP arguments)
    record: dict[str, Any]  # report(...)
    seconds: dict[str, float]  # "solve": the streamed pass, "hyperparameters": search


def optimise(
    model: Model,
    frames: Sequence[Frame],
    chunks: Sequence[Sequence[int]],
    batches: Sequence[Batch],
    sigmas: Sigmas,
    given: tuple[Sequence[float], Mapping[str, Sequence[float]] | None],
    mode: str,
    jitter: float,
    progress: bool = False,
) -> Optimised:
    """Delta of every term and the noise factors by the evidence on ``frames`` (one
    streamed pass, then L-BFGS-B), and the model solved at the optimum. ``model``
    holds the terms at the initial delta; ``sigmas`` the initial noise, from the
    ``given`` settings ``(default_sigma, config_type_sigma)``; ``mode``:
    ``"quantity"`` or ``"per_config_type"``."""
    t0 = time.perf_counter()
    groups = NoiseGroups.of(frames, mode == "per_config_type")
    K_mm = block_K_mm(model.terms)
    stats = statistics(model, frames, chunks, batches, sigmas, groups, K_mm, progress)
    t1 = time.perf_counter()
    opt = maximise(stats, jitter)
    initial = settings_at(model, groups, None, *given)
    best = optimised_model(model, stats, opt, jitter)
    final = settings_at(best, groups, opt.log_s, *given)
    seconds = {"solve": t1 - t0, "hyperparameters": time.perf_counter() - t1}
    return Optimised(
        best, initial, final, report(opt, groups, stats, initial, final), seconds
    )


def format_report(record: Mapping[str, Any]) -> str:
    """Lines for the fit summary and ``gapfit info`` from ``report``'s record."""
    ini, fin = record["initial"], record["final"]
    state = "converged" if record["converged"] else f"stopped: {record['message']}"
    if "step" in record:  # models of earlier versions lack it
        state += (
            f"; gradient {record['gradient']:.2g} nats per log factor, "
            f"remaining step {record['step']:.2g} in log factor"
        )
    lines = [
        f"hyperparameters by evidence ({record['groups']} sigma factors; "
        f"{record['iterations']} iterations, {state}): log evidence "
        f"{ini['log_evidence']:.6g} -> {fin['log_evidence']:.6g} nats"
    ]
    lines += [
        f"  delta {name}: {ini['delta'][name]:.6g} -> {value:.6g} eV"
        for name, value in fin["delta"].items()
    ]

    def values(v: Sequence[float]) -> str:
        return " ".join(f"{x:.4g}" for x in v)

    lines.append(
        f"  default_sigma: {values(ini['default_sigma'])} -> "
        f"{values(fin['default_sigma'])} (eV/atom, eV/Å, eV/atom)"
    )
    for name, v in fin["config_type_sigma"].items():
        before = ini["config_type_sigma"].get(name)
        lines.append(
            f"  config_type_sigma {name}: "
            f"{values(before) if before else 'default'} -> {values(v)}"
        )
    if record["at_bound"]:
        lines.append(f"  at the search bound: {', '.join(record['at_bound'])}")
    return "\n".join(lines)
