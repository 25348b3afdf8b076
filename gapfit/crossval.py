"""K-fold cross-validation of a fitted model on its own training data, and the std
calibration it gives without a held-out set.

The configurations (isolated atoms aside: they stay in every fold's training part)
are dealt at random (``seed``) into ``k`` folds. The model of fold j has the fitted
model's terms, sparse set, e0, sigmas, jitter and hyperparameters and is solved on
the other folds: the fit's least squares (``sparse_gp``) through the factor of the
whitened rows of those frames. One pass over the data folds each fold's rows into
its own factor ``R_j (M+1, M+1)`` (``update``'s scaled rows); the factor of all
folds but j is the R of the stacked ``R_i, i != j`` (``tsqr.stack_qr``), so k models
cost one pass and k small QRs, not k refits. Each fold's frames are then predicted,
with stds, by the model that did not see them.

What stays shared: the sparse points were chosen from all frames (a held-out
environment can be a sparse point, which lowers its Nyström residual) and delta and
the sigmas were chosen on all of them (``--optimise-hyperparameters``). With M
sparse points among many environments the first touches few of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ase
import numpy as np
from tqdm.auto import tqdm

from gapfit.calibration import (
    Calibrated,
    calibrated_on,
    summary,
    without_calibration,
)
from gapfit.data import Frame, as_frames
from gapfit.errors import GapfitError
from gapfit.model import Model
from gapfit.neighbours import NO_SHAPE
from gapfit.sparse_gp import empty_factor, finish, fold_whitened, prior_factor
from gapfit.terms import block_K_mm
from gapfit.tsqr import stack_qr, tree_reduce
from gapfit.update import LABELS, frame_rows, model_sigmas

ISOLATED = "isolated_atom"


def folds(frames: Sequence[Frame], k: int, seed: int) -> list[np.ndarray]:
    """Indices of ``frames`` in each of ``k`` folds: a seeded permutation of the
    configurations that are not isolated atoms, dealt in turn (sizes differ by at
    most one)."""
    pool = np.array([i for i, f in enumerate(frames) if f.config_type != ISOLATED])
    if k < 2 or len(pool) < k:
        raise GapfitError(
            f"cross-validation with {k} folds needs k >= 2 and at least k "
            f"configurations besides isolated atoms; found {len(pool)}: lower --cv."
        )
    order = np.random.default_rng(seed).permutation(pool)
    return [np.sort(order[j::k]) for j in range(k)]


def fold_models(
    model: Model,
    frames: Sequence[Frame],
    parts: Sequence[np.ndarray],
    chunk_atoms: int = 512,
) -> list[Model]:
    """The model solved without each part of ``frames`` (indices ``parts``; frames in
    no part are in every fit): one pass over the frames, then one QR per part."""
    sigmas, jitter = model_sigmas(model)
    L = prior_factor(block_K_mm(model.terms), jitter)
    M = L.shape[0]
    shape = list(NO_SHAPE)  # raised in place: the folds share padded shapes

    def factor(idx: Sequence[int]) -> np.ndarray:
        R = empty_factor(M)
        rows = frame_rows(model, [frames[i] for i in idx], sigmas, chunk_atoms, shape)
        for A, b in rows:
            R = fold_whitened(R, A, b, L)
        return np.asarray(R)

    inside = set(np.concatenate(parts).tolist())
    always = [i for i in range(len(frames)) if i not in inside]
    R_parts = [factor(p) for p in parts]
    R_always = factor(always)
    out = []
    for j in range(len(parts)):
        others = [R_always] + [R for i, R in enumerate(R_parts) if i != j]
        posterior = finish(tree_reduce(others, stack_qr), L)
        out.append(dataclasses.replace(model, posterior=posterior))
    return out


def cross_validated(
    model: Model,
    frames: Sequence[Frame | ase.Atoms],
    k: int = 5,
    seed: int = 0,
    chunk_atoms: int = 512,
    progress: bool = False,
    std: bool = True,
) -> tuple[list[Frame], list[dict]]:
    """Each configuration of ``frames`` (the model's training data; isolated atoms
    left out) with its prediction and DTC stds (``std`` False: the means only, about
    20 times faster) by the fold model that did not see it, in the order of the
    frames: ``(frames, Model.predict results)``; ``progress``: a bar over the folds'
    predictions."""
    frames = as_frames(frames, require=LABELS)
    raw = without_calibration(model)
    parts = folds(frames, k, seed)
    preds: dict[int, dict] = {}
    models = fold_models(raw, frames, parts, chunk_atoms)
    bar = tqdm(
        zip(parts, models, strict=True),
        total=k,
        unit="fold",
        desc="held-out predictions",
        disable=not progress,
    )
    shape, width = raw.padded_shape(frames, std=std)  # every fold: one compilation
    for part, fold_model in bar:
        held = [frames[i] for i in part]
        wheres = [f.where for f in held]
        got = fold_model.predict(held, std, wheres, shape=shape, width=width)
        preds.update(zip(part.tolist(), got, strict=True))
    order = sorted(preds)
    return [frames[i] for i in order], [preds[i] for i in order]


def calibrate_cv(
    model: Model,
    frames: Sequence[Frame | ase.Atoms],
    k: int = 5,
    seed: int = 0,
    per_config_type: bool = False,
    chunk_atoms: int = 512,
    progress: bool = False,
) -> Calibrated:
    """``calibration.calibrate`` on the ``k``-fold cross-validated predictions of
    the model's own training ``frames`` (``cross_validated``) instead of a held-out
    set. Returns the calibrated model and the values with their DTC and calibrated
    stds."""
    held, preds = cross_validated(model, frames, k, seed, chunk_atoms, progress)
    data = summary(held) | {
        "held_out": f"{k}-fold cross-validation on the training data (seed {seed})"
    }
    return calibrated_on(model, held, preds, per_config_type, data)
