"""Sparse GP against an independent dense exact GP, and the streamed QR.

Reference: a dense GP on total energies whose covariances are built by autodiff of
``sum_{i,i'} k(x_i(r), x_i'(r'))`` with respect to positions and strain (jax.jacrev /
jacfwd), sharing nothing with ``blocks.py`` / ``variance.py`` / ``distance_2b`` rows
and priors but the descriptor (SOAP vectors; pair distances). With every training
environment a sparse point, DTC equals the exact GP for any target that is linear in
the local energies (energies, forces, virials). Checked for the SOAP and 2-body terms.
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from scipy.linalg import solve_triangular

import gapfit  # noqa: F401  (float64)
from gapfit.blocks import VOIGT, batch_arrays, descriptors_jit
from gapfit.distance_2b import (
    TILE,
    PairSpec,
    SEKernel,
    cutoff_function,
    pair_priors,
    pair_type,
)
from gapfit.kernels import DotProductKernel, kernel_block, normalise
from gapfit.model import Model
from gapfit.neighbours import make_batch, pad_batch, pair_tables
from gapfit.soap import SoapSpec, soap, soap_and_pair_derivatives
from gapfit.sparse_gp import (
    Posterior,
    dtc_variance,
    empty_factor,
    finish,
    fold_whitened,
    lower_solve,
    prior_factor,
)
from gapfit.terms import PairTerm, SoapTerm
from gapfit.variance import (
    prior_energy_variance,
    prior_virial_variance,
    soap_rows_and_priors,
)

SPEC = SoapSpec(
    species=(29, 79),
    cutoff=3.2,
    n_max=3,
    l_max=2,
    atom_sigma=0.5,
    cutoff_transition_width=0.8,
)
KERNEL = DotProductKernel(delta=0.7, zeta=2)
PAIR = PairSpec(species=(29, 79), cutoff=3.2, cutoff_transition_width=0.8)
# gap_fit's distance_Nb order=2: compact_clusters T (both orders) and F (once)
PAIR_NB = dataclasses.replace(PAIR, permutations=True)
PAIR_NB_ONCE = dataclasses.replace(PAIR, permutations=True, visits=1)
PAIR_KERNEL = SEKernel(delta=0.3, theta=0.7)
# gap_fit's theta_fac: a length per pair type (Cu-Cu, Cu-Au, Au-Au)
PAIR_KERNEL_PER_TYPE = SEKernel(delta=0.3, theta=(0.5, 0.7, 0.9))
SIGMA_E = 0.01  # eV, noise on total energies
JITTER = 1e-12


def _cell(seed: int, a: float = 3.6):
    rng = np.random.default_rng(seed)
    at = bulk("Cu", "fcc", a=a, cubic=True)
    at.numbers[rng.integers(0, 4)] = 79
    at.positions += rng.normal(0, 0.15, at.positions.shape)
    at.cell = at.cell.array @ (np.eye(3) + 0.02 * rng.normal(size=(3, 3)))
    at.calc = EMT()
    return at


def _pairs_with_offsets(at):
    batch = make_batch([at], SPEC.species, SPEC.neighbour_cutoff, pad=False)
    pos0 = at.positions
    offset = batch.D - (pos0[batch.neighbour] - pos0[batch.centre])  # S . cell

    def D_of(pos, eps):
        return (pos[batch.neighbour] - pos[batch.centre] + offset) @ (
            jnp.eye(3) + eps
        ).T

    return batch, D_of


def _soap_features(at):
    """(p_hat, species)(r, strain) of one structure as a differentiable function."""
    batch, D_of = _pairs_with_offsets(at)

    def features(pos, eps):
        p = soap(
            SPEC,
            D_of(pos, eps),
            jnp.asarray(batch.centre),
            jnp.asarray(batch.neighbour_species),
            jnp.asarray(batch.pair_mask),
            jnp.asarray(batch.species),
        )
        return normalise(p)[0], jnp.asarray(batch.species)

    return features


def _soap_k_total(pa, sa, pb, sb):
    return jnp.sum(
        KERNEL.delta**2 * (pa @ pb.T) ** KERNEL.zeta * (sa[:, None] == sb[None, :])
    )


def _pair_features(at, ordered: bool = True):
    """(distances, pair types)(r, strain) of every pair, i-j and j-i apart (gap_fit's
    distance_2b and compact distance_Nb descriptors), or each pair once
    (``ordered=False``: distance_Nb with compact_clusters=F)."""
    batch, D_of = _pairs_with_offsets(at)
    keep = batch.pair_mask > 0 if ordered else batch.canonical > 0
    types = pair_type(batch.species[batch.centre], batch.neighbour_species, 2)[keep]

    def features(pos, eps):
        return jnp.linalg.norm(D_of(pos, eps)[keep], axis=1), jnp.asarray(types)

    return features


def _pair_k_total(ra, ta, rb, tb, permutations: bool = False, kernel=PAIR_KERNEL):
    """Energy covariance: summed over both configurations' descriptors; with
    ``permutations`` the kernel sums over the 2 orders of a pair of one species
    (gap_fit's distance_Nb: types 0 (Cu-Cu) and 2 (Au-Au) of 2 species); the
    ``kernel``'s length scale of the row's pair type (a tuple: one per type)."""
    theta = jnp.broadcast_to(jnp.asarray(kernel.theta), (3,))[ta][:, None]
    k = kernel.delta**2 * jnp.exp(-((ra[:, None] - rb[None, :]) ** 2) / (2 * theta**2))
    if permutations:
        k = k * jnp.where((ta == 0) | (ta == 2), 2.0, 1.0)[:, None]
    fc = cutoff_function(PAIR, ra)[:, None] * cutoff_function(PAIR, rb)[None, :]
    return jnp.sum(k * fc * (ta[:, None] == tb[None, :]))


KINDS = {
    "soap": (_soap_features, _soap_k_total),
    "distance_2b": (_pair_features, _pair_k_total),
    "distance_nb": (_pair_features, partial(_pair_k_total, permutations=True)),
    "distance_nb_once": (
        partial(_pair_features, ordered=False),
        partial(_pair_k_total, permutations=True),
    ),
    "distance_2b_per_type": (
        _pair_features,
        partial(_pair_k_total, kernel=PAIR_KERNEL_PER_TYPE),
    ),
}


def _strain(e):
    """Symmetric strain from Voigt (xx yy zz yz xz xy), off-diagonals split in half."""
    return jnp.array(
        [
            [e[0], e[5] / 2, e[4] / 2],
            [e[5] / 2, e[1], e[3] / 2],
            [e[4] / 2, e[3] / 2, e[2]],
        ]
    )


def _fit_energies(term, train, y):
    """Sparse GP of one term on total energies only."""
    batch = make_batch(train, SPEC.species, SPEC.neighbour_cutoff)
    rows = term.rows(batch_arrays(batch))
    yp = np.zeros(len(batch.config_mask))
    yp[: len(y)] = y
    K_mm = term.K_mm()
    L = prior_factor(K_mm, JITTER)
    R = empty_factor(len(K_mm))
    post = finish(
        fold_whitened(R, rows.energy / SIGMA_E, jnp.asarray(yp) / SIGMA_E, L), L
    )
    return Model((term,), SPEC.species, post, {29: 0.0, 79: 0.0})


@pytest.fixture(scope="module")
def setup():
    train = [_cell(s) for s in range(4)]
    test = _cell(99, a=3.7)
    y = np.array([t.get_potential_energy() for t in train])
    # every training environment (atom; pair distance) a sparse point
    batch = make_batch(train, SPEC.species, SPEC.neighbour_cutoff)
    b = batch_arrays(batch)
    X = np.asarray(descriptors_jit(SPEC, b))[batch.atom_mask > 0]
    Z_hat, _ = normalise(jnp.asarray(X))
    Z_s = batch.species[batch.atom_mask > 0]
    soap_term = SoapTerm(SPEC, KERNEL, np.asarray(Z_hat), Z_s)
    keep = batch.canonical > 0
    r = np.linalg.norm(batch.D[keep], axis=1)
    t = pair_type(batch.species[batch.centre[keep]], batch.neighbour_species[keep], 2)
    # equal distances (periodic self-images) are one point of the GP: keep one
    rt = np.unique(np.stack([np.round(r, 10), t], 1), axis=0)
    models = {"soap": _fit_energies(soap_term, train, y)}
    for kind, spec, kernel in (
        ("distance_2b", PAIR, PAIR_KERNEL),
        ("distance_nb", PAIR_NB, PAIR_KERNEL),
        ("distance_nb_once", PAIR_NB_ONCE, PAIR_KERNEL),
        ("distance_2b_per_type", PAIR, PAIR_KERNEL_PER_TYPE),
    ):
        term = PairTerm(spec, kernel, rt[:, 0], rt[:, 1].astype(np.int64))
        models[kind] = _fit_energies(term, train, y)
    return train, test, y, models, Z_hat, Z_s


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_equals_dense_exact_gp(setup, kind):
    train, test, y, models, _, _ = setup
    feature_fn, _k_total = KINDS[kind]
    fns = [feature_fn(t) for t in train]
    envs = [
        f(jnp.asarray(t.positions), jnp.zeros((3, 3)))
        for f, t in zip(fns, train, strict=True)
    ]
    K = np.array([[_k_total(*a, *b) for b in envs] for a in envs])
    Kinv = np.linalg.inv(K + SIGMA_E**2 * np.eye(len(y)))

    f_test = feature_fn(test)
    pos, e0 = jnp.asarray(test.positions), jnp.zeros(6)

    def k_star(pos, e, env):  # cov(E_test(pos, strain), E_train)
        return _k_total(*f_test(pos, _strain(e)), *env)

    def k_ss(pos, e, pos2, e2):  # prior cov of the test energy at two geometries
        return _k_total(*f_test(pos, _strain(e)), *f_test(pos2, _strain(e2)))

    grads = jax.jit(jax.value_and_grad(k_star, argnums=(0, 1)))
    kE, kF, kW = [], [], []
    for env in envs:
        value, (g_pos, g_eps) = grads(pos, e0, env)
        kE.append(value)
        kF.append(-g_pos)  # cov(F, E_n) = -d/dr cov(E, E_n)
        kW.append(-g_eps)  # virial = -dE/d(strain)
    kE, kF, kW = (
        np.array(kE),
        np.stack(kF, -1),
        np.stack(kW, -1),
    )  # (n,), (N,3,n), (6,n)
    hFF = jax.jit(jax.jacfwd(jax.grad(k_ss, 2), 0))(pos, e0, pos, e0)  # (N,3,N,3)
    hWW = jax.jit(jax.jacfwd(jax.grad(k_ss, 3), 1))(pos, e0, pos, e0)  # (6,6)
    n = len(test)
    exact = {
        "E": (kE @ Kinv @ y, k_ss(pos, e0, pos, e0) - kE @ Kinv @ kE),
        "F": (
            kF @ Kinv @ y,
            np.asarray(hFF).reshape(3 * n, 3 * n).diagonal().reshape(n, 3)
            - np.einsum("akn,nm,akm->ak", kF, Kinv, kF),
        ),
        "W": (kW @ Kinv @ y, np.diagonal(hWW) - np.einsum("kn,nm,km->k", kW, Kinv, kW)),
    }

    model = models[kind]
    batch = make_batch([test], SPEC.species, SPEC.neighbour_cutoff)
    b = batch_arrays(batch)
    tables = model.tables(batch, model.table_widths(batch))
    mean, sd = model.mean_and_std(b, tables)
    np.testing.assert_allclose(
        mean.forces, model.mean(b, tables).forces, rtol=0, atol=1e-10
    )
    sparse = {
        "E": (mean.energy[0], sd.energy[0] ** 2),
        "F": (mean.forces[:n], sd.forces[:n] ** 2),
        "W": (mean.virial[0], sd.virial[0] ** 2),
    }
    for q in ("E", "F", "W"):
        for what, got, want in zip(("mean", "var"), sparse[q], exact[q], strict=True):
            got, want = np.asarray(got), np.asarray(want)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-6, f"{kind} {q} {what}: relative deviation {err:.2e}"


def test_fold_is_independent_of_chunking(setup):
    """Folding rows one at a time gives the same weights as all at once."""
    _, _, _, _, Z_hat, Z_s = setup
    rng = np.random.default_rng(3)
    K_mm = kernel_block(KERNEL, Z_hat, Z_s, Z_hat, Z_s)
    A = jnp.asarray(rng.normal(size=(30, K_mm.shape[0])))
    bvec = jnp.asarray(rng.normal(size=30))
    L = prior_factor(K_mm, 1e-8)
    w_all = finish(fold_whitened(empty_factor(len(K_mm)), A, bvec, L), L).weights
    R = empty_factor(len(K_mm))
    for k in range(30):
        R = fold_whitened(R, A[k : k + 1], bvec[k : k + 1], L)
    w_one = finish(R, L).weights
    # reference from the normal equations, for this small well-conditioned case only
    L = K_mm + 1e-8 * jnp.eye(K_mm.shape[0])
    w_ref = jnp.linalg.solve(L + A.T @ A, A.T @ bvec)
    assert np.abs(w_all - w_one).max() < 1e-10 * np.abs(w_all).max()
    assert np.abs(w_all - w_ref).max() < 1e-6 * np.abs(w_ref).max()


def test_pair_tables_list_every_pair_into_and_out_of_each_atom():
    """Two configurations, padded: each real pair appears once in its neighbour's row
    of ``incoming``, once, as its slot there, in its centre's row of ``outgoing`` and
    once in its centre's row of ``by_centre`` (in the same order); the pads point at a
    masked pair and at the extra slot A K."""
    rng = np.random.default_rng(4)
    cells = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "fcc", a=3.6) * (2, 2, 1)]
    for c in cells:
        c.rattle(0.05, rng=rng)
    batch = pad_batch(make_batch(cells, (29,), 3.0), 40, 1200, 3)
    tables = pair_tables(batch)
    A, K = tables.incoming.shape
    real = np.flatnonzero(batch.pair_mask > 0)
    inc = tables.incoming.ravel()
    slot_real = batch.pair_mask[inc] > 0
    assert sorted(inc[slot_real]) == sorted(real)  # each real pair once
    rows = np.repeat(np.arange(A), K)
    assert np.all(batch.neighbour[inc[slot_real]] == rows[slot_real])
    out = tables.outgoing.ravel()
    used = out < A * K
    assert used.sum() == len(real) and len(set(out[used])) == len(real)
    pairs_out = inc[out[used]]  # the pairs behind the slots
    assert np.all(batch.centre[pairs_out] == np.repeat(np.arange(A), K)[used])
    assert tables.outgoing.shape[1] == K
    by = tables.by_centre.ravel()  # the same pairs by centre, padded with a masked one
    real_slot = batch.pair_mask[by] > 0
    assert sorted(by[real_slot]) == sorted(real)
    assert np.all(batch.centre[by[real_slot]] == rows[real_slot])
    assert np.all(by[used] == pairs_out)  # outgoing's slots hold the same pairs


def test_pair_priors_of_energies_and_virials_equal_the_double_sums():
    """The 2-body prior variances of total energies and virials, summed over tiles of
    pairs (each off-diagonal tile once for both orders), equal the exact double sums
    over all pairs of each configuration: two 108-atom configurations of 3 tiles of
    canonical pairs each in one batch (off-diagonal tiles, no cross-configuration
    terms)."""
    rng = np.random.default_rng(7)
    cells = []
    for seed in (1, 2):
        at = _cell(seed) * (3, 3, 3)
        at.positions += rng.normal(0, 0.05, at.positions.shape)
        cells.append(at)
    batch = make_batch(cells, PAIR.species, PAIR.neighbour_cutoff)
    assert np.sum(batch.canonical) > 2 * 2 * TILE  # > 2 tiles per configuration
    tables = pair_tables(batch)
    _, energy, _, virial = pair_priors(
        PAIR, PAIR_KERNEL, batch_arrays(batch), jnp.asarray(tables.incoming)
    )
    for c, at in enumerate(cells):
        f, pos, e0 = _pair_features(at), jnp.asarray(at.positions), jnp.zeros(6)

        def k_ss(e, e2, f=f, pos=pos):  # prior cov of the energy at two strains
            return _pair_k_total(*f(pos, _strain(e)), *f(pos, _strain(e2)))

        np.testing.assert_allclose(energy[c], k_ss(e0, e0), rtol=1e-10)
        hWW = jax.jacfwd(jax.grad(k_ss, 1), 0)(e0, e0)  # (6, 6)
        np.testing.assert_allclose(virial[c], np.diagonal(hWW), rtol=1e-9)


def test_soap_energy_and_virial_priors_over_tiles_equal_one_tile():
    """The SOAP prior variances of total energies and virials, summed over tiles of
    atoms (off-diagonal tiles once for both orders, tiles across two configurations,
    a padded last tile), equal the sums in one tile; the energies also equal the
    double sum of the kernel over each configuration's atoms."""
    cells = [_cell(seed) * (2, 2, 1) for seed in (3, 4)]
    batch = make_batch(cells, SPEC.species, SPEC.neighbour_cutoff)
    b = batch_arrays(batch)
    p, dP = soap_and_pair_derivatives(
        SPEC, b["D"], b["centre"], b["neighbour_species"], b["pair_mask"], b["species"]
    )
    p_hat, norm = normalise(p)
    VD = jnp.einsum("pxf,py->pfxy", dP, b["D"])  # each pair's dP (x) D
    V = jnp.stack([VD[..., i, j] for i, j in VOIGT], axis=1)  # (P, 6, F), any entries
    V = jax.ops.segment_sum(V, b["centre"], len(batch.species))
    whole = len(batch.species)
    virial = jax.jit(prior_virial_variance, static_argnums=5)  # one program per tile
    energies = jax.jit(prior_energy_variance, static_argnums=3)
    for tile in (7, 16):
        assert whole > 2 * tile
        np.testing.assert_allclose(
            virial(KERNEL, p_hat, norm, V, b, tile),
            virial(KERNEL, p_hat, norm, V, b, whole),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            energies(KERNEL, p_hat, b, tile),
            energies(KERNEL, p_hat, b, whole),
            rtol=1e-12,
        )
    energy = energies(KERNEL, p_hat, b, 7)
    for c, at in enumerate(cells):
        pa, sa = _soap_features(at)(jnp.asarray(at.positions), jnp.zeros((3, 3)))
        np.testing.assert_allclose(energy[c], _soap_k_total(pa, sa, pa, sa), rtol=1e-11)


def test_soap_force_rows_and_priors_over_blocks_of_atoms_equal_one_block():
    """The SOAP force rows and force prior variances computed over blocks of atoms
    (a padded last block) equal those of one block; so do the other rows and
    priors."""
    at = _cell(5) * (2, 2, 2)
    batch = make_batch([at], SPEC.species, SPEC.neighbour_cutoff)
    tables = pair_tables(batch)
    rng = np.random.default_rng(0)
    Z = normalise(jnp.asarray(rng.uniform(size=(12, SPEC.n_features))))[0]
    Z_s = jnp.asarray(rng.integers(0, 2, 12))
    args = (SPEC, KERNEL, Z, Z_s, batch_arrays(batch), tables)
    assert len(batch.species) > 2 * 13
    one = soap_rows_and_priors(*args)
    blocks = soap_rows_and_priors(*args, row_block=13)
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(blocks), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-14)


def _posterior(L: np.ndarray, R: np.ndarray) -> Posterior:
    return Posterior(jnp.zeros(len(L)), jnp.asarray(L), jnp.asarray(R))


def test_dtc_variance_clips_each_terms_residual_apart() -> None:
    """Two terms with block-diagonal L_mm: where no residual is negative the result is
    the joint formula; a large term whose computed residual came out negative by
    rounding (-0.05 of a 1e9 prior) no longer cancels the other term's +0.01."""
    rng = np.random.default_rng(0)
    L1, L2 = (np.tril(rng.normal(size=(m, m))) + 3 * np.eye(m) for m in (3, 4))
    L = np.zeros((7, 7))
    L[:3, :3], L[3:, 3:] = L1, L2
    R = np.triu(rng.normal(size=(7, 7))) + 4 * np.eye(7)
    k1, k2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    ny1 = np.sum(solve_triangular(L1, k1.T, lower=True) ** 2, axis=0)
    ny2 = np.sum(solve_triangular(L2, k2.T, lower=True) ** 2, axis=0)

    def post(k: np.ndarray) -> np.ndarray:  # |R^-T L^-1 k|^2
        y = solve_triangular(L, k.T, lower=True)
        return np.sum(solve_triangular(R, y, trans="T") ** 2, axis=0)

    prior1, prior2 = ny1 + 0.3, ny2 + 0.2
    got = dtc_variance([prior1, prior2], [k1, k2], _posterior(L, R))
    joint = prior1 + prior2 - ny1 - ny2 + post(np.hstack([k1, k2]))
    np.testing.assert_allclose(got, joint, rtol=1e-12)

    big = 1e9 / ny1  # term 1 scaled to a 1e9 prior, its residual -0.05 by rounding
    k1_big = k1 * np.sqrt(big)[:, None]
    R = 1e8 * np.eye(7)  # a small posterior part: what is left is term 2's residual
    got = dtc_variance(
        [np.full(5, 1e9 - 0.05), ny2 + 0.01], [k1_big, k2], _posterior(L, R)
    )
    np.testing.assert_allclose(got, 0.01 + post(np.hstack([k1_big, k2])), rtol=1e-5)


def test_dtc_variance_of_a_sum_of_pairs_matches_80_bit_arithmetic() -> None:
    """A 2-body-like term (delta 100 eV, 20 sparse distances 0.26 Å apart, theta 1 Å)
    and the energy of 700 pair distances: the residual (~4.5 eV^2 under a 3e9 eV^2
    prior) agrees with an 80-bit computation; through the explicit ``L_mm^-1`` it was
    1.5e-4 off."""
    rng = np.random.default_rng(0)
    z = np.linspace(0.0, 5.0, 20)

    def k(a, b):
        return 1e4 * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2)

    L = np.linalg.cholesky(k(z, z) + 1e-4 * np.eye(20))
    r = rng.uniform(2.0, 5.0, (3, 700))
    rows = np.stack([k(x, z).sum(axis=0) for x in r])  # (3, 20)
    prior = np.array([k(x, x).sum() for x in r])
    got = dtc_variance([prior], [rows], _posterior(L, 1e8 * np.eye(20)))
    L_ld, y = L.astype(np.longdouble), np.zeros((20, 3), np.longdouble)
    for i in range(20):  # forward substitution in 80 bits
        y[i] = (rows.T[i] - L_ld[i, :i] @ y[:i]) / L_ld[i, i]
    r_ld = r.astype(np.longdouble)
    exact = np.array([k(x, x).sum() for x in r_ld]) - np.sum(y**2, axis=0)
    assert 4.0 < exact.min() and exact.max() < 5.0
    np.testing.assert_allclose(got, exact.astype(float), rtol=1e-5)


@pytest.mark.parametrize("M", [5, 128, 129, 300])
def test_lower_solve_equals_lapack_across_blocks(M: int) -> None:
    # M below, at and past a multiple of SOLVE_BLOCK; both orientations
    rng = np.random.default_rng(M)
    A = rng.normal(size=(M, M))
    L = np.linalg.cholesky(A @ A.T / M + np.eye(M))
    R = np.linalg.qr(rng.normal(size=(2 * M, M)), mode="r")
    B = rng.normal(size=(M, 7))
    x = np.asarray(lower_solve(jnp.asarray(L), jnp.asarray(B)))
    y = np.asarray(lower_solve(jnp.asarray(R), jnp.asarray(B), transposed=True))
    assert np.allclose(x, solve_triangular(L, B, lower=True), rtol=1e-12, atol=1e-13)
    want = solve_triangular(R, B, lower=False, trans="T")
    assert np.allclose(y, want, rtol=1e-12, atol=1e-13)
