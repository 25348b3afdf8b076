"""Cheap updates of a fitted GAP: fold new labelled frames into its QR factor.

The fit solves the regularised least squares of ``sparse_gp.py`` in whitened
coordinates ``v = L_mm^T w`` through the upper factor ``R_aug (M+1, M+1)`` of
``[[I, 0], [Lambda^-1/2 K_nm L_mm^-T, Lambda^-1/2 y]]``. Its first M rows are
``[R | Q^T c]`` with ``Q^T c = R v``, and its last entry, the residual norm, changes
neither ``R`` nor ``v`` of a later fold. So a model's posterior alone rebuilds a factor
that is equivalent for all further folds::

    R_aug = [[R, R L_mm^T w], [0, 0]]                                    (M+1, M+1)

and new frames' scaled rows (``assembly.scaled_chunks``, with the sigmas, jitter and
e0 the model was fitted with), whitened by ``L_mm``, are folded into it:
O((M + rows) M^2) per chunk instead of a pass over all data. With the same data and
sparse set the result equals a full refit (``refit``) to rounding. New sparse points
change ``K_mm`` and every kernel row, so they need ``refit``. Bartók & Csányi, IJQC
115, 1051 (2015) (the least squares); Golub & Van Loan, Matrix Computations,
sec. 6.5 (updating a QR factorisation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import ase
import jax
import jax.numpy as jnp

from gapfit.assembly import model_batches, scaled_chunks
from gapfit.data import Frame, Sigmas, as_frames
from gapfit.errors import GapfitError
from gapfit.fit import GAP, _data_summary
from gapfit.hyperparameters import optimise
from gapfit.model import Model, chunk_indices
from gapfit.sparse_gp import (
    Posterior,
    empty_factor,
    finish,
    fold_whitened,
    prior_factor,
    solve,
)
from gapfit.terms import block_K_mm

LABELS = ("energy", "forces")  # labels every added frame must have
# info entries that describe one fit and are stale after an update
STALE = ("training_errors", "timings_s", "peak_rss_gib", "calibration")


def model_sigmas(model: Model) -> tuple[Sigmas, float]:
    """The noise levels and the sparse jitter (eV^2) the model was fitted with, from
    ``model.info["settings"]`` (written by ``GAP.fit``)."""
    settings = model.info.get("settings")
    if not settings:
        raise GapfitError(
            "the model has no stored settings (sigmas, jitter), so new data cannot be "
            "folded in consistently; refit it with GAP.fit / gapfit fit."
        )
    gap = GAP(
        default_sigma=settings["default_sigma"],
        config_type_sigma=settings.get("config_type_sigma") or None,
        sigma_per_atom=settings["sigma_per_atom"],
    )
    return gap._sigmas(), float(settings["sparse_jitter"])


def refit(
    model: Model,
    frames: Sequence[Frame | ase.Atoms],
    chunk_atoms: int = 512,
    shape: list[int] | None = None,
) -> Model:
    """The model's posterior solved from scratch on ``frames`` (``Frame`` objects or
    labelled Atoms; same terms, sparse points, e0, sigmas and jitter).

    Args:
        chunk_atoms: atoms per streamed chunk (memory only).
        shape: a ``neighbours.batch_shape`` list: every chunk's batch is padded to the
            largest of it and all batches of this call, and it is raised to that
            size in place, so that calls sharing one list compile the kernel rows
            once (jit compiles per shape).
    """
    frames = as_frames(frames, require=LABELS)
    sigmas, jitter = model_sigmas(model)
    K_mm = block_K_mm(model.terms)
    L = prior_factor(K_mm, jitter)
    R_aug = empty_factor(len(K_mm))
    for A, b in frame_rows(model, frames, sigmas, chunk_atoms, shape):
        R_aug = fold_whitened(R_aug, A, b, L)
    info = {k: v for k, v in model.info.items() if k not in STALE}
    info["data"] = _data_summary(frames) if frames else {}
    return dataclasses.replace(model, posterior=finish(R_aug, L), info=info)


@jax.jit
def _augmented(post: Posterior) -> jax.Array:
    """``[[R, R L_mm^T w], [0, 0]]`` (M+1, M+1): the fit's factor to fold rows into."""
    R, L, w = post.R, post.L_mm, post.weights
    M = w.shape[0]
    return jnp.zeros((M + 1, M + 1)).at[:M, :M].set(R).at[:M, M].set(R @ (L.T @ w))


def update(
    model: Model,
    frames: Sequence[Frame | ase.Atoms],
    chunk_atoms: int = 512,
    shape: list[int] | None = None,
) -> Model:
    """The model with ``frames`` added to its training data, by folding their rows
    into ``R_aug = [[R, R L_mm^T w], [0, 0]]`` (see the module docstring); equal to
    ``refit`` on the old and new frames together. Arguments as for ``refit``."""
    frames = as_frames(frames, require=LABELS)
    if not frames:
        return model
    sigmas, _ = model_sigmas(model)
    L = model.posterior.L_mm
    R_aug = _augmented(model.posterior)
    for A, b in frame_rows(model, frames, sigmas, chunk_atoms, shape):
        R_aug = fold_whitened(R_aug, A, b, L)
    info = {k: v for k, v in model.info.items() if k not in STALE}
    info["data"] = _merged(info.get("data", {}), _data_summary(frames))
    return dataclasses.replace(model, posterior=solve(R_aug, L), info=info)


def reoptimised(
    model: Model,
    frames: Sequence[Frame | ase.Atoms],
    mode: str = "quantity",
    chunk_atoms: int = 512,
    shape: list[int] | None = None,
) -> Model:
    """``refit`` with each term's delta and the sigmas chosen again by the evidence
    on ``frames`` (``hyperparameters.optimise``; same sparse set), starting from the
    model's own, then solved by ``refit`` (a second pass); the chosen values replace
    its stored settings, so later ``update`` calls use them. ``mode``: "quantity"
    or "per_config_type"; other arguments as for ``refit``."""
    frames = as_frames(frames, require=LABELS)
    if not frames:
        raise GapfitError("re-optimising the hyperparameters needs labelled frames.")
    sigmas, jitter = model_sigmas(model)
    settings = model.info["settings"]
    given = (settings["default_sigma"], settings.get("config_type_sigma") or None)
    chunks, batches = _batches(model, frames, chunk_atoms, shape)
    best = optimise(model, frames, chunks, batches, sigmas, given, mode, jitter)
    info = {k: v for k, v in model.info.items() if k not in STALE}
    info["settings"] = {
        **settings,
        **{
            name: {**settings[name], "delta": delta}
            for name, delta in best.final["delta"].items()
        },
        "default_sigma": best.final["default_sigma"],
        "config_type_sigma": best.final["config_type_sigma"],
    }
    info["hyperparameters"] = best.record
    # solved again by the fit's own pass (rows whitened per chunk): the optimum's
    # factor, whitened as a whole, is accurate to ~1e-7 only (sparse_gp.whitened)
    return refit(dataclasses.replace(best.model, info=info), frames, chunk_atoms, shape)


def _batches(model, frames, chunk_atoms, shape):
    """Chunks of ``frames`` and their batches (padded to ``shape``, raised in place)."""
    chunks = chunk_indices([len(f.numbers) for f in frames], chunk_atoms)
    return chunks, model_batches(model, frames, chunks, shape)


def frame_rows(
    model: Model,
    frames: Sequence[Frame],
    sigmas: Sigmas,
    chunk_atoms: int,
    shape: list[int] | None,
) -> Iterable[tuple[jax.Array, jax.Array]]:
    """Scaled rows ``(A (r, M), b (r,))`` of ``frames`` chunk by chunk, ``[K | y]``
    divided by the noise std (``assembly.scaled_chunks``; batches padded to ``shape``,
    raised in place)."""
    if not frames:
        return []
    chunks, batches = _batches(model, frames, chunk_atoms, shape)
    return scaled_chunks(model, frames, chunks, batches, sigmas)


def _merged(old: dict, new: dict) -> dict:
    """Data summary of old + new frames (counts add; no hash of the union)."""
    out = {k: old.get(k, 0) + v for k, v in new.items() if isinstance(v, int)}
    types = dict(old.get("config_types", {}))
    for k, v in new["config_types"].items():
        types[k] = types.get(k, 0) + v
    out["config_types"] = types
    return out
