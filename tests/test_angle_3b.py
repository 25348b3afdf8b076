"""The 3-body term (gap_fit's angle_3b) against a reference written here from its
definition: triplets enumerated with ASE's neighbour list in Python, the energy and
the prior covariance as plain JAX functions of positions and strain, differentiated
by autodiff."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

from gapfit.angle_3b import (
    ARDKernel,
    TripletSpec,
    batch_descriptors,
    triplet_mean,
    triplet_priors,
    triplet_rows,
    triplet_sparse_points,
)
from gapfit.blocks import VOIGT
from gapfit.neighbours import make_batch, pad_batch, pair_tables

CUTOFF, WIDTH = 3.2, 0.6
SPEC_KW = {"cutoff": CUTOFF, "cutoff_transition_width": WIDTH}
KERNEL = ARDKernel(0.3, (0.8, 0.5, 0.7))


def _cell(seed: int = 0, alloy: bool = False):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
    if alloy:
        atoms.numbers[[1, 4, 6]] = 79
    return atoms


class Reference:
    """Triplets of ``atoms`` from ASE, geometry as a JAX function of positions and a
    deformation of the cell."""

    def __init__(self, atoms, species):
        i, j, S = neighbor_list("ijS", atoms, CUTOFF)
        rows = [
            (c, j[a], *S[a], j[b], *S[b])
            for c in range(len(atoms))
            for a, b in itertools.combinations(np.flatnonzero(i == c), 2)
        ]
        t = np.array(rows)
        self.c, self.ja, self.jb = t[:, 0], t[:, 1], t[:, 5]
        self.Sa, self.Sb = t[:, 2:5].astype(float), t[:, 6:9].astype(float)
        self.pos, self.cell = atoms.positions, np.array(atoms.cell)
        s = np.searchsorted(species, atoms.numbers)
        S_ = len(species)
        pair_index = {
            ab: n
            for n, ab in enumerate(
                itertools.combinations_with_replacement(range(S_), 2)
            )
        }
        self.types = np.array(
            [
                s[c] * len(pair_index) + pair_index[tuple(sorted((s[a], s[b])))]
                for c, a, b in zip(self.c, self.ja, self.jb, strict=True)
            ]
        )

    def features(self, pos, strain):
        """Descriptors (T, 3) and envelopes 2 fc fc (T,)."""
        F = jnp.eye(3) + strain
        pos, cell = pos @ F.T, self.cell @ F.T
        Da = pos[self.ja] + self.Sa @ cell - pos[self.c]
        Db = pos[self.jb] + self.Sb @ cell - pos[self.c]
        r1, r2 = jnp.linalg.norm(Da, axis=1), jnp.linalg.norm(Db, axis=1)
        r3 = jnp.linalg.norm(Da - Db, axis=1)

        def fc(r):
            x = jnp.clip((r - CUTOFF + WIDTH) / WIDTH, 0.0, 1.0)
            return 0.5 * (1 + jnp.cos(jnp.pi * x))

        d = jnp.stack([r1 + r2, (r1 - r2) ** 2, r3], axis=1)
        return d, 2 * fc(r1) * fc(r2)

    def k(self, d1, t1, d2, t2):
        th = jnp.asarray(KERNEL.theta)
        q = jnp.sum(((d1[:, None] - d2[None]) / th[None, None]) ** 2, axis=-1)
        return KERNEL.delta**2 * jnp.exp(-0.5 * q) * (t1[:, None] == t2[None])

    def energy(self, pos, strain, Zd, Zt, w):
        d, f = self.features(pos, strain)
        return jnp.sum(f * (self.k(d, self.types, Zd, Zt) @ w))

    def covariance(self, pos1, strain1, pos2, strain2, centre=None):
        """Prior covariance of the energies of two geometries (or of one atom's
        local energy)."""
        d1, f1 = self.features(pos1, strain1)
        d2, f2 = self.features(pos2, strain2)
        if centre is not None:
            f1, f2 = f1 * (self.c == centre), f2 * (self.c == centre)
        return f1 @ self.k(d1, self.types, d2, self.types) @ f2


def _setup(alloy: bool):
    atoms = _cell(1, alloy)
    species = (29, 79) if alloy else (29,)
    spec = TripletSpec(species, **SPEC_KW)
    batch = make_batch([atoms], species, CUTOFF, triplet_cutoff=CUTOFF)
    d, t = batch_descriptors(spec, batch)
    Zd, Zt = triplet_sparse_points(d, t, 15, "uniform", 3)
    w = np.random.default_rng(2).normal(size=len(Zt))
    return atoms, species, spec, batch, Zd, Zt, w


@pytest.mark.parametrize("alloy", [False, True])
def test_mean_and_rows_match_the_reference(alloy):
    atoms, species, spec, batch, Zd, Zt, w = _setup(alloy)
    ref = Reference(atoms, species)
    assert len(ref.c) == len(batch_descriptors(spec, batch)[0])
    b, tables = batch._asdict(), pair_tables(batch)
    args = (jnp.asarray(Zd), jnp.asarray(Zt))
    mean = triplet_mean(spec, KERNEL, *args, jnp.asarray(w), b, tables)
    rows = triplet_rows(spec, KERNEL, *args, b)
    n = len(atoms)
    zero = jnp.zeros((3, 3))
    E = ref.energy(atoms.positions, zero, Zd, Zt, w)
    forces = -jax.grad(ref.energy)(atoms.positions, zero, Zd, Zt, w)
    dE = jax.grad(ref.energy, argnums=1)(atoms.positions, zero, Zd, Zt, w)
    virial = -np.array([0.5 * (dE[a, c] + dE[c, a]) for a, c in VOIGT])
    np.testing.assert_allclose(mean.energy[0], E, rtol=1e-12)
    np.testing.assert_allclose(mean.forces[:n], forces, atol=1e-10)
    np.testing.assert_allclose(mean.virial[0], virial, atol=1e-10)
    np.testing.assert_allclose(mean.local_energy[:n].sum(), E, rtol=1e-12)
    # the kernel rows are the same linear functionals of the weights
    np.testing.assert_allclose(rows.energy[0] @ w, E, rtol=1e-12)
    np.testing.assert_allclose(rows.forces[:n] @ w, forces, atol=1e-10)
    np.testing.assert_allclose(rows.virial[0] @ w, virial, atol=1e-10)
    np.testing.assert_allclose(rows.local @ w, mean.local_energy, atol=1e-12)
    assert np.abs(forces).max() > 0.1  # not a vacuous comparison


@pytest.mark.parametrize("alloy", [False, True])
def test_prior_variances_match_the_reference(alloy):
    atoms, species, spec, batch, *_ = _setup(alloy)
    ref = Reference(atoms, species)
    priors = triplet_priors(spec, KERNEL, batch._asdict(), pair_tables(batch), True)
    pos, zero, n = atoms.positions, jnp.zeros((3, 3)), len(atoms)
    np.testing.assert_allclose(
        priors.energy[0], ref.covariance(pos, zero, pos, zero), rtol=1e-11
    )
    local = [ref.covariance(pos, zero, pos, zero, centre=a) for a in range(n)]
    np.testing.assert_allclose(priors.local_energy[:n], local, rtol=1e-11)
    # var(F_a) = d^2 cov / dx_a dx'_a; var(W_kl) = d^2 cov / de_kl de'_kl
    mixed = jax.jacfwd(jax.grad(ref.covariance, argnums=0), argnums=2)
    H = mixed(pos, zero, pos, zero)  # (n, 3, n, 3)
    forces = np.einsum("axax->ax", np.asarray(H))
    np.testing.assert_allclose(priors.forces[:n], forces, rtol=1e-10)
    strain = jax.jacfwd(jax.grad(ref.covariance, argnums=1), argnums=3)
    S = np.asarray(strain(pos, zero, pos, zero))  # (3, 3, 3, 3)
    np.testing.assert_allclose(
        priors.virial[0], [S[a, c, a, c] for a, c in VOIGT], rtol=1e-10
    )
    assert priors.forces[:n].min() > 0 and priors.virial[0].min() > 0


def test_padding_and_cutoff_do_not_change_the_term():
    """Extra padding of every size leaves rows and priors as they were; a pair
    cutoff longer than the triplet cutoff gives the same triplets."""
    atoms, species, spec, batch, Zd, Zt, w = _setup(True)
    wide = make_batch([atoms], species, 5.0, triplet_cutoff=CUTOFF)
    A, P, C, T, W = (n + 7 for n in (len(wide.species), len(wide.D), 2, 0, 0))
    T, W = len(wide.triplet_pairs) + 9, wide.triplet_touch.shape[1] + 5
    padded = pad_batch(wide, A, P, C, T, W)
    n = len(atoms)
    out = []
    for bt in (batch, padded):
        rows = triplet_rows(
            spec, KERNEL, jnp.asarray(Zd), jnp.asarray(Zt), bt._asdict()
        )
        pri = triplet_priors(spec, KERNEL, bt._asdict(), pair_tables(bt), True)
        out.append((rows.forces[:n], rows.virial[0], pri.forces[:n], pri.energy[0]))
    for x, y in zip(*out, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-12)
