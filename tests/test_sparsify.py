"""Tests for gapfit.sparsify: per-species sparse point selection."""

from __future__ import annotations

import numpy as np
import pytest

import gapfit  # noqa: F401  (switches float64 on)
from gapfit.errors import GapfitError
from gapfit.gapstring import parse_soap
from gapfit.sparsify import (
    SPARSE_METHODS,
    farthest_point_sampling,
    select_sparse,
    select_sparse_by_config_type,
)


def _random_env(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["random", "cur_points"])
def test_deterministic_given_seed_and_different_across_seeds(method: str) -> None:
    X, Z = _random_env(300), np.full(300, 14)
    a = select_sparse(X, Z, 20, method, seed=3)
    b = select_sparse(X, Z, 20, method, seed=3)
    c = select_sparse(X, Z, 20, method, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_per_species_counts_sorted_unique(method: str) -> None:
    # species 6 has fewer environments (3) than n_sparse: it contributes all of them
    Z = np.concatenate([np.full(100, 1), np.full(50, 8), np.full(3, 6)])
    Z = np.random.default_rng(1).permutation(Z)
    X = _random_env(Z.size, seed=2)
    idx = select_sparse(X, Z, 10, method, seed=0)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    species, counts = np.unique(Z[idx], return_counts=True)
    assert dict(zip(species.tolist(), counts.tolist(), strict=True)) == {
        1: 10,
        6: 3,
        8: 10,
    }


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_duplicates_never_chosen_twice(method: str) -> None:
    # a "crystal": 4 distinct environments, each repeated 40 times with a different
    # overall scale and 1e-14 noise (same x̂); ask for more than exist
    rng = np.random.default_rng(5)
    base = _random_env(4, seed=7)
    which = rng.permutation(np.repeat(np.arange(4), 40))
    X = base[which] * rng.uniform(0.5, 2.0, size=(which.size, 1))
    X = X + 1e-14 * rng.normal(size=X.shape)
    idx = select_sparse(X, np.full(which.size, 26), 10, method, seed=1)
    assert sorted(which[idx].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_species_selected_independently_of_order(method: str) -> None:
    # species 1 alone vs species 1 after species 8: same environments of species 1
    X1, X8 = _random_env(60, seed=1), _random_env(40, seed=2)
    alone = select_sparse(X1, np.full(60, 1), 7, method, seed=9)
    both = select_sparse(
        np.vstack([X8, X1]), np.repeat([8, 1], [40, 60]), 7, method, seed=9
    )
    np.testing.assert_array_equal(both[both >= 40] - 40, alone)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_row_scale_does_not_matter(method: str) -> None:
    # the downstream kernel is a normalised dot product: only directions count
    X, Z = _random_env(80, seed=4), np.full(80, 3)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(80, 1))
    np.testing.assert_array_equal(
        select_sparse(X, Z, 9, method, seed=2),
        select_sparse(X * scale, Z, 9, method, seed=2),
    )


def test_fps_picks_one_point_per_cluster() -> None:
    # 5 tight clusters (spread 1e-3) around random directions in 8-d
    rng = np.random.default_rng(11)
    centres = _unit(rng.normal(size=(5, 8)))
    label = rng.permutation(np.repeat(np.arange(5), 40))
    X = centres[label] + 1e-3 * rng.normal(size=(label.size, 8))
    idx = select_sparse(X, np.full(label.size, 29), 5, "fps", seed=0)
    assert sorted(label[idx].tolist()) == [0, 1, 2, 3, 4]


def test_fps_matches_reference_loop() -> None:
    # reference: plain greedy loop on d² = ‖x̂_i − x̂_j‖² (computed independently)
    X_hat = _unit(_random_env(50, d=5, seed=8))
    d2 = np.sum((X_hat[:, None, :] - X_hat[None, :, :]) ** 2, axis=-1)
    ref = [int(np.argmax(np.sum((X_hat - X_hat.mean(0)) ** 2, axis=1)))]
    for _ in range(9):
        ref.append(int(np.argmax(d2[:, ref].min(axis=1))))
    got = np.asarray(farthest_point_sampling(X_hat, 10))
    np.testing.assert_array_equal(got, ref)


def test_cur_prefers_high_leverage_outlier() -> None:
    # 200 rows in a 2-d subspace plus one row along an orthogonal direction: the
    # outlier has leverage 1/3 (k = rank = 3), the bulk rows ≈ 1/300 each
    angle = np.linspace(0.0, np.pi, 200, endpoint=False)
    X = np.zeros((201, 6))
    X[:200, 0], X[:200, 1] = np.cos(angle), np.sin(angle)
    X[200, 4] = 1.0
    Z = np.full(201, 1)
    for seed in range(20):
        assert 200 in select_sparse(X, Z, 20, "cur_points", seed=seed)
    # contrast: uniform random sampling misses it for most seeds (P(hit) ≈ 0.1)
    hits = sum(200 in select_sparse(X, Z, 20, "random", seed=s) for s in range(20))
    assert hits < 10


def test_uniform_is_evenly_spaced_over_distinct_environments() -> None:
    X, Z = _random_env(11), np.full(11, 1)
    np.testing.assert_array_equal(select_sparse(X, Z, 3, "uniform", seed=0), [0, 5, 10])
    # each environment twice in a row: spacing is over the 10 distinct ones
    X2 = np.repeat(_random_env(10), 2, axis=0)
    np.testing.assert_array_equal(
        select_sparse(X2, np.full(20, 1), 4, "uniform", seed=0), [0, 6, 12, 18]
    )


def test_bad_method_suggests_the_closest() -> None:
    with pytest.raises(GapfitError, match="cur_points") as info:
        select_sparse(_random_env(5), np.ones(5, int), 2, "cur", seed=0)
    assert "Did you mean 'cur_points'" in str(info.value)
    assert "fps" in str(info.value)  # lists the valid ones


def test_gap_fit_cur_covariance_not_supported() -> None:
    with pytest.raises(GapfitError, match="not supported.*cur_points"):
        select_sparse(_random_env(5), np.ones(5, int), 2, "CUR_COVARIANCE", seed=0)


def test_method_is_case_insensitive() -> None:
    X, Z = _random_env(30), np.full(30, 1)
    np.testing.assert_array_equal(
        select_sparse(X, Z, 4, "CUR_POINTS", seed=1),
        select_sparse(X, Z, 4, "cur_points", seed=1),
    )


@pytest.mark.parametrize("n_sparse", [0, -3])
def test_n_sparse_must_be_positive(n_sparse: int) -> None:
    with pytest.raises(GapfitError, match="n_sparse"):
        select_sparse(_random_env(5), np.ones(5, int), n_sparse, "random", seed=0)


def test_bad_inputs_raise_gapfit_error() -> None:
    X, Z = _random_env(5), np.ones(5, int)
    with pytest.raises(GapfitError, match="seed"):
        select_sparse(X, Z, 2, "random", seed=-1)
    with pytest.raises(GapfitError, match="Z"):
        select_sparse(X, Z[:4], 2, "random", seed=0)
    X[3, 1] = np.nan
    with pytest.raises(GapfitError, match="row 3"):
        select_sparse(X, Z, 2, "random", seed=0)


@pytest.mark.parametrize("method", ["cur_points", "random"])
def test_config_type_n_sparse_picks_per_type_and_species(method: str) -> None:
    """gap_fit's config_type_n_sparse: n per species among each named type's
    environments, none from other types; a row chosen by two types counts once."""
    rng = np.random.default_rng(5)
    types = rng.choice(["bulk", "surface", "md"], size=300)
    Z = rng.choice([29, 79], size=300)
    X = _random_env(300, seed=6)
    X[1] = X[0]  # the same environment ...
    types[:2], Z[:2] = ["bulk", "surface"], [29, 29]  # ... in two named types
    counts = {"bulk": 7, "surface": 4}
    idx = select_sparse_by_config_type(X, Z, types, counts, method, seed=1)
    assert np.all(np.diff(idx) > 0)
    assert set(types[idx]) == {"bulk", "surface"}
    for name, n in counts.items():
        for z in (29, 79):
            rows = idx[(types[idx] == name) & (Z[idx] == z)]
            assert len(rows) in (n, n - 1)  # n, less a duplicate dropped
    assert not {0, 1} <= set(idx.tolist())  # one of the twins at most
    for name, n in counts.items():  # each type's picks are its own selection
        rows = np.flatnonzero(types == name)
        own = rows[select_sparse(X[rows], Z[rows], n, method, 1)]
        got = idx[types[idx] == name]
        np.testing.assert_array_equal(got, own[np.isin(own, got)])
        assert set(own) - set(got) <= {1}  # at most the duplicate of row 0 dropped


def test_config_type_n_sparse_keeps_an_environment_of_two_types_once() -> None:
    X = _random_env(2)
    X = np.vstack([X, 2.0 * X[0]])  # row 2: row 0 again (scale does not count)
    types, Z = np.array(["a", "a", "b"]), np.full(3, 29)
    idx = select_sparse_by_config_type(X, Z, types, {"a": 5, "b": 5}, "random", 0)
    np.testing.assert_array_equal(idx, [0, 1])


def test_config_type_n_sparse_parses_and_checks() -> None:
    soap = parse_soap("soap cutoff=4.0 config_type_n_sparse={bulk:20:surface:5}")
    assert soap["config_type_n_sparse"] == {"bulk": 20, "surface": 5}
    for bad, words in (
        ("{bulk:20:surface}", "config_type:count pairs"),
        ("{bulk:0}", "whole number >= 1"),
        ("{bulk:2:bulk:3}", "given twice"),
    ):
        with pytest.raises(GapfitError, match=words):
            parse_soap(f"config_type_n_sparse={bad}")
    X, Z = _random_env(20), np.full(20, 14)
    with pytest.raises(GapfitError, match="found: bulk"):
        select_sparse_by_config_type(
            X, Z, np.full(20, "bulk"), {"bulkk": 3}, "random", 0
        )
