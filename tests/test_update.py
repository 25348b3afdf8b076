"""Cheap updates (gapfit.update) against full refits, the padded sparse set
(gapfit.sparse_set) and the greedy selections (gapfit.selection).

Reference: ``update.refit``, the fit's own streamed QR over all frames with the same
sparse set; with the fit's CUR sparse set it reproduces ``GAP.fit`` itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from emt_cells import CAPACITY, SOAP, cu_cells, emt_labelled
from scipy.linalg import solve_triangular

from gapfit import GAP, GapfitError
from gapfit.assembly import padded_batches, scaled_chunks
from gapfit.data import as_frames
from gapfit.selection import greedy_max_det, local_energy_variance, unit_soap
from gapfit.sparse_set import (
    PAD,
    choose_sparse,
    compact,
    force_residuals,
    force_sparse,
    free_slots,
    padded,
    prior_model,
    widened_pairs,
    with_sparse,
)
from gapfit.terms import block_K_mm
from gapfit.update import LABELS, model_sigmas, refit, reoptimised, update

KEYS = ("energy", "forces", "virial", "energy_std", "forces_std", "virial_std")


@pytest.fixture(scope="module")
def cells():
    return cu_cells(7, seed=3)


@pytest.fixture(scope="module")
def fitted(cells):
    gap = GAP(soap=SOAP, e0_method="average", chunk_atoms=1)
    return gap.fit(cells[:3]).model_


def _weights(model) -> np.ndarray:
    return np.asarray(model.posterior.weights)


def _prediction_gap(a, b, structures) -> float:
    """Largest difference of any predicted mean or std (eV, eV/Å)."""
    pa, pb = a.predict(structures, std=True), b.predict(structures, std=True)
    return max(
        float(np.max(np.abs(np.asarray(x[k]) - np.asarray(y[k]))))
        for x, y in zip(pa, pb, strict=True)
        for k in KEYS
    )


def test_update_equals_refit(fitted, cells):
    assert fitted.term("soap").n_sparse == CAPACITY
    again = refit(fitted, cells[:3], chunk_atoms=1)  # the fit's own solve
    w0 = _weights(fitted)
    assert np.abs(_weights(again) - w0).max() <= 1e-8 * np.abs(w0).max()

    one_by_one = update(update(fitted, cells[3:4], chunk_atoms=1), cells[4:5])
    both = update(fitted, cells[3:5], chunk_atoms=1)
    full = refit(fitted, cells[:5], chunk_atoms=1)
    w = _weights(full)
    assert np.abs(w - w0).max() > 1e-3 * np.abs(w).max()  # the data mattered
    for model in (one_by_one, both):
        assert np.abs(_weights(model) - w).max() <= 1e-8 * np.abs(w).max()
        assert _prediction_gap(model, full, cells[5:7]) <= 1e-8
    assert both.info["data"]["n_configs"] == 5
    assert "training_errors" not in both.info  # stale after an update


def test_posterior_is_consistent_at_large_delta(cells):
    """A 2-body term with delta 50 eV (pair energies of std 100 eV, each pair counted
    in both orders: where the evidence puts it when it carries the cohesive energy)
    makes ``cond(K_mm)`` huge. The whitened factor keeps the
    posterior right: the weight-space std of each training observation (energy,
    force and virial component) is at most its noise sigma (it is observed
    directly), and the weights solve the whitened least-squares system as well as a
    dense solve does (the same minimum; on a CPU the same weights to 1e-11, on an
    H100 2e-5 apart along its flattest directions, cond 2.5e7)."""
    frames = as_frames(cells[:4], require=LABELS)
    gap = GAP(
        soap=SOAP,
        distance_2b="cutoff=4.0 delta=50 theta_uniform=1.0 n_sparse=12",
        default_sigma=(0.0003, 0.002, 0.006, 0.0),
        e0={"Cu": 0.0},
        e0_method="explicit",
    )
    model = gap.fit(frames).model_
    sigmas, jitter = model_sigmas(model)
    K_mm = block_K_mm(model.terms)
    assert np.linalg.cond(np.asarray(K_mm + jitter * np.eye(len(K_mm)))) > 1e10
    chunks = [list(range(len(frames)))]
    batches = padded_batches(frames, chunks, model.species, model.neighbour_cutoff)
    ((A, b),) = list(scaled_chunks(model, frames, chunks, batches, sigmas))
    A, b = np.asarray(A), np.asarray(b)
    L, R = np.asarray(model.posterior.L_mm), np.asarray(model.posterior.R)
    # rows A are kernel rows / their sigma: posterior var / sigma^2 = |R^-T L^-1 a|^2
    Z = solve_triangular(R, solve_triangular(L, A.T, lower=True), trans="T")
    assert np.sum(Z**2, axis=0).max() <= 1.0 + 1e-6  # var <= sigma^2
    B = solve_triangular(L, A.T, lower=True).T
    S, rhs = np.vstack([B, np.eye(len(L))]), np.r_[b, np.zeros(len(L))]
    v = np.linalg.lstsq(S, rhs, rcond=None)[0]
    v_fit = L.T @ np.asarray(model.posterior.weights)
    misfit = np.sum((S @ v - rhs) ** 2)  # rounding of S @ v alone: ~1e-9 relative
    assert np.sum((S @ v_fit - rhs) ** 2) <= misfit * (1 + 1e-8)
    assert np.abs(v_fit - v).max() <= 1e-4 * np.abs(v).max()


def test_reoptimised_equals_an_optimising_fit(fitted, cells):
    """Re-choosing delta and sigmas on a fitted model's data and sparse set gives
    the model that ``GAP(optimise_hyperparameters=True).fit`` gives on that data,
    and stores the chosen sigmas, so that later updates use them."""
    gap = GAP(soap=SOAP, e0_method="average", optimise_hyperparameters=True)
    want = gap.fit(cells[:3]).model_
    got = reoptimised(fitted, cells[:3], chunk_atoms=1)
    final, ref = got.info["hyperparameters"]["final"], want.info["hyperparameters"]
    assert final["delta"]["soap"] != 1.0  # it moved from the default
    np.testing.assert_allclose(
        final["delta"]["soap"], ref["final"]["delta"]["soap"], rtol=1e-4
    )
    np.testing.assert_allclose(
        final["default_sigma"], ref["final"]["default_sigma"], rtol=1e-4
    )
    assert got.info["settings"]["soap"]["delta"] == final["delta"]["soap"]
    assert got.info["settings"]["default_sigma"] == final["default_sigma"]
    for a, b in zip(got.predict(cells[5:7]), want.predict(cells[5:7]), strict=True):
        np.testing.assert_allclose(a["forces"], b["forces"], rtol=0, atol=1e-5)
    # later updates fold with the chosen sigmas: equal to a refit with them
    new, full = (
        update(got, cells[3:4], chunk_atoms=1),
        refit(got, cells[:4], chunk_atoms=1),
    )
    assert _prediction_gap(new, full, cells[5:7]) <= 1e-6  # smaller sigmas than above
    stale = dataclasses.replace(
        got, info={**got.info, "settings": fitted.info["settings"]}
    )
    assert (
        _prediction_gap(update(stale, cells[3:4], chunk_atoms=1), full, cells[5:7])
        > 1e-4
    )


def _soap(gap, species, frames):
    """Unit SOAP rows and species indices of the one SOAP term's environments."""
    env = unit_soap(gap, species, frames)
    return env.X_hat["soap"], env.species


def test_padded_model_update_equals_refit(cells):
    gap = GAP(soap=SOAP, e0_method="average")
    prior = prior_model(gap, (29,), cells[:3], {"soap": CAPACITY})
    assert np.all(prior.term("soap").sparse_species == PAD)
    X_hat, s = _soap(gap, (29,), cells[:3])
    pick = choose_sparse(prior, X_hat, s, 16, 1e-6)
    assert 0 < len(pick) <= 16
    model = refit(with_sparse(prior, X_hat[pick], s[pick]), cells[:3], chunk_atoms=1)
    pad = model.term("soap").sparse_species == PAD
    assert pad.sum() == CAPACITY - len(pick)

    new = update(model, cells[3:5], chunk_atoms=1)
    full = refit(model, cells[:5], chunk_atoms=1)
    w = _weights(full)
    assert np.abs(_weights(new) - w).max() <= 1e-8 * np.abs(w).max()
    assert _prediction_gap(new, full, cells[5:7]) <= 1e-8

    # padding is inert: zero weights, decoupled blocks, exact round trip
    assert np.all(_weights(new)[pad] == 0.0)
    for M, diag in ((new.posterior.R, 1.0), (new.posterior.L_mm, 1e-4)):
        M = np.asarray(M)  # whitened prior I in R, sqrt(jitter 1e-8) in L_mm
        assert np.all(M[np.ix_(pad, ~pad)] == 0) and np.all(M[np.ix_(~pad, pad)] == 0)
        assert np.allclose(np.abs(np.diag(M)[pad]), diag)
    small = compact(new)
    assert small.term("soap").n_sparse == len(pick)
    assert small.info["n_sparse"] == {"soap": {"Cu": len(pick)}}
    back = padded(small, {"soap": CAPACITY})
    real = ~pad
    for name in ("weights", "L_mm"):
        a, b = (
            np.asarray(getattr(back.posterior, name)),
            np.asarray(getattr(new.posterior, name)),
        )
        assert np.array_equal(
            a[..., real] if a.ndim == 1 else a[np.ix_(real, real)],
            b[..., real] if b.ndim == 1 else b[np.ix_(real, real)],
        )
    assert np.array_equal(
        back.term("soap").sparse_X[: len(pick)], new.term("soap").sparse_X[real]
    )


def test_choose_sparse_skips_represented_environments(cells):
    gap = GAP(soap=SOAP, e0_method="average")
    prior = prior_model(gap, (29,), cells[:1], {"soap": CAPACITY})
    X_hat, s = _soap(gap, (29,), cells[:1])
    pick = choose_sparse(prior, X_hat, s, 8, 1e-6)
    model = with_sparse(prior, X_hat[pick], s[pick])
    model = refit(model, cells[:1], chunk_atoms=1)
    # the picked environments, duplicated, are represented: none is picked again
    again = choose_sparse(
        model, np.repeat(X_hat[pick], 2, axis=0), np.repeat(s[pick], 2), 8, 1e-6
    )
    assert len(again) == 0
    # free slots bound the picks
    full = dataclasses.replace(
        model,
        terms=(
            dataclasses.replace(
                model.term("soap"),
                sparse_species=np.zeros(CAPACITY, dtype=np.int64),
            ),
        ),
    )
    assert len(choose_sparse(full, X_hat, s, 8, 0.0)) == 0


@pytest.mark.parametrize("species", [(29,), (29, 79)])
def test_force_sparse_lowers_the_force_residuals(species):
    cells = cu_cells(3, seed=11, labelled=False)
    if len(species) > 1:  # a Cu-Au alloy: every third atom gold
        for atoms in cells:
            atoms.numbers[::3] = 79
    cells = [emt_labelled(a) for a in cells]
    gap = GAP(soap=SOAP, e0_method="average")
    prior = prior_model(gap, species, cells[:2], {"soap": CAPACITY})
    X_hat, s = _soap(gap, species, cells[:2])
    pick = choose_sparse(prior, X_hat, s, 4, 1e-6)
    model = refit(with_sparse(prior, X_hat[pick], s[pick]), cells[:2], chunk_atoms=1)
    frames = as_frames(cells[2:3])
    X, t = _soap(gap, species, frames)
    r_F, R, K = force_residuals(model, frames, X, t)
    assert r_F.shape == (3 * len(frames[0].numbers),) and r_F.min() > 0

    def residuals_with(j):  # of the model refitted with sparse points X[j]
        new = refit(with_sparse(model, X[j], t[j]), cells[:2], chunk_atoms=1)
        return force_residuals(new, frames, X, t)[0]

    # one point at candidate j lowers each residual by R_Fj^2 / R_jj, exactly (the
    # best candidate of each species)
    gain = np.sum(R**2, axis=0) / np.diag(K)
    best = [int(np.argmax(np.where(t == k, gain, -1.0))) for k in range(len(species))]
    for j in best:
        expected = r_F - R[:, j] ** 2 / K[j, j]
        assert np.abs(residuals_with([j]) - expected).max() <= 1e-6 * r_F.max()

    # greedy: the best candidate first; fewer residuals left than by local energy
    picks = force_sparse(model, frames, X, t, 3, 0.0)
    assert len(picks) == 3 and int(np.argmax(gain)) in picks
    by_energy = choose_sparse(model, X, t, 3, 0.0)
    assert residuals_with(picks).sum() < residuals_with(by_energy).sum()
    # a target every component meets picks nothing; free slots bound the picks
    assert len(force_sparse(model, frames, X, t, 3, r_F.max())) == 0
    free = free_slots(model)
    every = force_sparse(model, frames, X, t, CAPACITY, 0.0)
    assert np.all(np.bincount(t[every], minlength=len(species)) <= free)


@pytest.mark.parametrize(
    "how",
    ["theta_uniform=1.0 sparse_method=uniform", "theta_fac=0.5 sparse_method=random"],
)
def test_widened_pairs_cover_the_new_distances(cells, how):
    """New frames with shorter bonds re-choose the 2-body sparse points (gap_fit's
    uniform grid, or random distances) and theta_fac length over all the frames."""
    pair = f"cutoff=4.0 cutoff_transition_width=1.0 delta=1.0 {how} n_sparse=8"
    gap = GAP(soap=SOAP, distance_2b=pair, e0_method="average")
    model = prior_model(gap, (29,), cells[:1], {"soap": CAPACITY})
    before = model.term("distance_2b").sparse_r
    first = as_frames(cells[:1])
    assert widened_pairs(model, gap, first, first) is None  # nothing new
    squeezed = cells[1].copy()
    squeezed.set_cell(0.95 * squeezed.cell.array, scale_atoms=True)
    frames = as_frames([emt_labelled(squeezed)])
    d = squeezed.get_all_distances(mic=True)[np.triu_indices(len(squeezed), 1)]
    assert d.min() < before.min()  # the new frame has shorter bonds
    wide = widened_pairs(model, gap, frames, first + frames)
    after = wide.term("distance_2b").sparse_r
    assert len(after) == len(before) == 8  # same count: same shapes
    assert after.min() == pytest.approx(d.min(), abs=1e-10)
    longest = max(before.max(), d[d < 4.0].max())
    assert after.max() == pytest.approx(longest, abs=1e-10)
    if "uniform" in how:
        assert np.allclose(np.diff(after), np.diff(after)[0])  # uniform, as gap_fit
    else:
        theta = wide.term("distance_2b").kernel.theta
        assert theta == pytest.approx(0.5 * (longest - d.min()), rel=1e-9)
        assert not np.allclose(np.diff(after), np.diff(after)[0])
    fitted = refit(wide, as_frames(cells[:1]) + frames, chunk_atoms=1)
    (p,) = fitted.predict(frames, std=True)
    assert np.all(np.isfinite(p["forces"])) and np.all(p["forces_std"] > 0)


def test_greedy_max_det():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 3))
    X = np.concatenate([B, B[:2]])  # items 6, 7 duplicate items 0, 1
    K = X @ X.T
    picks = greedy_max_det(K, 8, tol=1e-9)
    assert picks[0] == np.argmax(np.diag(K))
    assert len(picks) == 3  # rank 3: a fourth item has zero conditional variance
    chosen = X[picks]
    assert np.linalg.matrix_rank(chosen) == 3
    # the greedy picks agree with brute-force conditional variances
    for t in range(1, 3):
        S = picks[:t]
        cond = np.diag(K) - np.einsum(
            "ij,jk,ik->i", K[:, S], np.linalg.inv(K[np.ix_(S, S)]), K[:, S]
        )
        cond[S] = -np.inf
        assert picks[t] == np.argmax(cond)
    group = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    capped = greedy_max_det(K, 8, 1e-9, group, np.array([1, 5]))
    assert np.sum(group[capped] == 0) == 1


def test_local_energy_variance_is_the_predicted_local_std(fitted, cells):
    """The pool score's per-environment variance, from descriptors alone, equals the
    square of the local-energy std that the full prediction gives (SOAP-only model)."""
    gap = GAP(soap=SOAP, e0_method="average")
    var = local_energy_variance(fitted, unit_soap(gap, (29,), cells[2:5]))
    predicted = fitted.predict(cells[2:5], std=True)
    std = np.concatenate([p["energies_std"] for p in predicted])
    assert np.allclose(var, std**2, rtol=1e-8, atol=1e-12)
    assert var.min() > 0.0


def test_update_needs_settings(fitted, cells):
    bare = dataclasses.replace(fitted, info={})
    with pytest.raises(GapfitError, match="no stored settings"):
        update(bare, cells[3:4])
