"""The 3-body term (gap_fit's angle_3b, and its distance_Nb order=3) against a
reference written here from its definition: triplets enumerated with ASE's neighbour
list in Python, the energy and the prior covariance as plain JAX functions of
positions and strain, differentiated by autodiff."""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list
from checks import (
    assert_forces_match_fd,
    assert_stress_matches_strain_fd,
    assert_symmetries,
)
from click.testing import CliRunner
from emt_cells import (
    alloy,
    clear_alloy_cell,
    cu_au_frames,
    cu_cell,
    cu_cells,
    emt_labelled,
    predictor,
)

from gapfit.angle_3b import (
    ARDKernel,
    TripletSpec,
    batch_descriptors,
    distinct_triplets,
    triplet_mean,
    triplet_priors,
    triplet_rows,
    triplet_sparse_points,
)
from gapfit.blocks import VOIGT
from gapfit.cli import main
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import parse_gap_fit_command
from gapfit.learn import learn_pool
from gapfit.model import Model
from gapfit.neighbours import make_batch, pad_batch, pair_tables
from gapfit.selection import descriptors
from gapfit.tune import _with, parse_grid
from gapfit.update import refit, update

CUTOFF, WIDTH = 3.2, 0.6
SPEC_KW = {"cutoff": CUTOFF, "cutoff_transition_width": WIDTH}
KERNEL = ARDKernel(0.3, (0.8, 0.5, 0.7))
# gap_fit symmetrises distance_Nb's lengths over the orders it sums: one length;
# its theta_fac gives each triplet type its own lengths (6 types of Cu and Au)
KERNELS = {
    "angle": KERNEL,
    "distances": ARDKernel(0.3, (0.6, 0.6, 0.6)),
    "per_type": ARDKernel(0.3, [(0.8 + 0.1 * t, 0.5 + 0.2 * t, 0.7) for t in range(6)]),
}


def _cell(seed: int = 0, alloy: bool = False, primitive: bool = False):
    """A rattled Cu cell (8 atoms; 3 of them Au for ``alloy``), or a 2-atom cell
    whose neighbours are mostly periodic images of the centre itself."""
    if primitive:
        atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
        atoms.positions[1] += [0.05, -0.08, 0.03]
        return atoms
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
    if alloy:
        atoms.numbers[[1, 4, 6]] = 79
    return atoms


class Reference:
    """Triplets of ``atoms`` from ASE, geometry as a JAX function of positions and a
    deformation of the cell."""

    def __init__(self, atoms, species, form: str = "angle", kernel: str = ""):
        self.form, self.kernel = form, KERNELS[kernel or form]
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
        self.species = species
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

    def distances(self, pos, strain):
        """r_ij, r_ik, r_jk (T,) of every triplet after the deformation."""
        F = jnp.eye(3) + strain
        pos, cell = pos @ F.T, self.cell @ F.T
        Da = pos[self.ja] + self.Sa @ cell - pos[self.c]
        Db = pos[self.jb] + self.Sb @ cell - pos[self.c]
        norm = lambda v: jnp.linalg.norm(v, axis=1)  # noqa: E731
        return norm(Da), norm(Db), norm(Da - Db)

    @staticmethod
    def fc(r):
        x = jnp.clip((r - CUTOFF + WIDTH) / WIDTH, 0.0, 1.0)
        return 0.5 * (1 + jnp.cos(jnp.pi * x))

    def features(self, pos, strain):
        """Descriptors (T, 3) and envelopes (T,): angle_3b's with 2 fc fc (both
        orders of j, k); distance_Nb's, the distances, with fc fc (once)."""
        r1, r2, r3 = self.distances(pos, strain)
        if self.form == "distances":
            return jnp.stack([r1, r2, r3], axis=1), self.fc(r1) * self.fc(r2)
        d = jnp.stack([r1 + r2, (r1 - r2) ** 2, r3], axis=1)
        return d, 2 * self.fc(r1) * self.fc(r2)

    def k(self, d1, t1, d2, t2):
        """ARD squared exponential; distance_Nb's summed over the 6 orders of the
        first descriptor's components (every relabelling of a triangle's atoms)."""
        n_types = len(self.species) ** 2 * (len(self.species) + 1) // 2
        th = jnp.asarray(self.kernel.lengths(n_types))[t1]  # the row's type's
        orders = (
            itertools.permutations(range(3))
            if self.form == "distances"
            else [(0, 1, 2)]
        )
        k = 0.0
        for o in orders:
            x = d1[:, list(o)]
            q = jnp.sum(((x[:, None] - d2[None]) / th[:, None]) ** 2, axis=-1)
            k = k + self.kernel.delta**2 * jnp.exp(-0.5 * q)
        return k * (t1[:, None] == t2[None])

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


def _setup(cell: str, form: str = "angle"):
    atoms = _cell(1, alloy=cell == "alloy", primitive=cell == "images")
    species = (29, 79) if cell == "alloy" else (29,)
    spec = TripletSpec(species, **SPEC_KW, form=form)
    batch = make_batch([atoms], species, CUTOFF, triplet_cutoff=CUTOFF)
    d, t = batch_descriptors(spec, batch)
    Zd, Zt = triplet_sparse_points(*distinct_triplets(d, t), 15, "uniform", 3)
    w = np.random.default_rng(2).normal(size=len(Zt))
    return atoms, species, spec, batch, Zd, Zt, w


# species types (with lengths per type); a cell of periodic self-images;
# distance_Nb's form (one element)
CELLS = [
    ("alloy", "angle", ""),
    ("alloy", "angle", "per_type"),
    ("images", "angle", ""),
    ("cu", "distances", ""),
    ("images", "distances", ""),
]


@pytest.mark.parametrize("cell, form, kernel", CELLS)
def test_mean_and_rows_match_the_reference(cell, form, kernel):
    atoms, species, spec, batch, Zd, Zt, w = _setup(cell, form)
    ref = Reference(atoms, species, form, kernel)
    assert len(ref.c) == len(batch_descriptors(spec, batch)[0])
    b, tables = batch._asdict(), pair_tables(batch)
    args = (jnp.asarray(Zd), jnp.asarray(Zt))
    mean = triplet_mean(spec, ref.kernel, *args, jnp.asarray(w), b, tables)
    rows = triplet_rows(spec, ref.kernel, *args, b)
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


@pytest.mark.parametrize("cell, form, kernel", CELLS)
def test_prior_variances_match_the_reference(cell, form, kernel):
    atoms, species, spec, batch, *_ = _setup(cell, form)
    ref = Reference(atoms, species, form, kernel)
    b, tables = batch._asdict(), pair_tables(batch)
    priors = triplet_priors(spec, ref.kernel, b, tables, True)
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
    atoms, species, spec, batch, Zd, Zt, w = _setup("alloy")
    wide = make_batch([atoms], species, 5.0, triplet_cutoff=CUTOFF)
    A, P, T = len(wide.species) + 7, len(wide.D) + 7, len(wide.triplet_pairs) + 9
    padded = pad_batch(wide, A, P, 3, T, wide.triplet_touch.shape[1] + 5)
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


# ---- fitted models -------------------------------------------------------------
def known_3b_labelled(atoms):
    """A copy labelled by a known 3-body potential (the reference's triplets):
    ``E = sum_t h(r_ij) h(r_ik) (cos theta_jik + 1/3)^2``,
    ``h(r) = f_c(r) exp(2.5 - r)``; forces and stress by autodiff."""
    ref = Reference(atoms, (29,))

    def energy(pos, strain):
        r1, r2, r3 = ref.distances(pos, strain)
        cos = (r1**2 + r2**2 - r3**2) / (2 * r1 * r2)
        h = lambda r: ref.fc(r) * jnp.exp(2.5 - r)  # noqa: E731
        return jnp.sum(h(r1) * h(r2) * (cos + 1 / 3) ** 2)

    zero = jnp.zeros((3, 3))
    de = jax.grad(energy, argnums=(0, 1))(atoms.positions, zero)
    out = atoms.copy()
    sym = 0.5 * (de[1] + de[1].T) / atoms.get_volume()
    out.calc = SinglePointCalculator(
        out,
        energy=float(energy(atoms.positions, zero)),
        forces=-np.asarray(de[0]),
        stress=np.array([sym[a, c] for a, c in VOIGT]),
    )
    return out


THREE_B = f"cutoff={CUTOFF} cutoff_transition_width={WIDTH} n_sparse=150 delta=1.0"


def test_3b_term_alone_learns_a_known_3_body_potential():
    rng = np.random.default_rng(7)
    train = [known_3b_labelled(cu_cell(rng)) for _ in range(8)]
    test = [known_3b_labelled(cu_cell(rng)) for _ in range(2)]
    gap = GAP(
        soap=None,
        angle_3b=THREE_B + " theta_fac=0.5",
        default_sigma=(1e-4, 0.002, 0.002),
        e0={29: 0.0},
    ).fit(train)
    assert [t.name for t in gap.model_.terms] == ["angle_3b"]
    pred = gap.predict(test)
    F = np.concatenate([a.get_forces() for a in test])
    F_hat = np.concatenate([p["forces"] for p in pred])
    rel = np.sqrt(np.mean((F - F_hat) ** 2) / np.mean(F**2))
    E_err = max(
        abs(p["energy"] - a.get_potential_energy())
        for p, a in zip(pred, test, strict=True)
    )
    print(
        f"\nknown 3-body potential: test force error {rel:.2%} of RMS, "
        f"energy {E_err / 32 * 1e3:.3f} meV/atom"
    )
    assert rel < 0.01
    assert E_err / 32 < 5e-4


# A 2-body + 3-body model of EMT copper and Cu/Au: its 3-body cutoff kinks
# (C^1 at 3.0 and 3.3 Å) and the 2-body ones (4.0, 4.8 Å) lie between fcc shells.
PAIR = (
    "cutoff=4.8 cutoff_transition_width=0.8 n_sparse=12 delta=1.0 sparse_method=uniform"
)
TRIPLET = (
    "cutoff=3.3 cutoff_transition_width=0.3 n_sparse=40 delta=0.1 sparse_method=uniform"
)
KINKS = (3.0, 3.3, 4.0, 4.8)
SETTINGS = {
    "distance_2b": PAIR,
    "angle_3b": TRIPLET + " theta_uniform=0.6",
    "default_sigma": (0.002, 0.05, 0.05),
    "e0_method": "average",
}


@pytest.fixture(scope="module")
def emt_frames():
    return cu_au_frames(21, 6, 3)


@pytest.fixture(scope="module")
def emt_model(emt_frames):
    return GAP(**SETTINGS).fit(emt_frames).model_


@pytest.fixture(scope="module")
def alloy_test():
    return clear_alloy_cell(99, KINKS)


def test_fitted_2b_3b_forces_and_stress_are_derivatives(emt_model, alloy_test):
    f = assert_forces_match_fd(
        predictor(emt_model), alloy_test, h=3e-3, order=4, rtol=1e-6, indices=range(8)
    )
    s = assert_stress_matches_strain_fd(
        predictor(emt_model), alloy_test, h=1e-3, order=4, rtol=1e-6
    )
    print(f"\n2b+3b: forces vs FD {f:.1e} eV/Å, stress vs FD {s:.1e} eV/Å^3")


def test_fitted_2b_3b_is_invariant_with_its_stds(emt_model, alloy_test):
    rng = np.random.default_rng(4)
    assert_symmetries(predictor(emt_model, std=True), alloy_test, rng, improper=True)


def test_fit_reproduces_its_data_within_sigmas_and_stds_cover_held_out(
    emt_model, emt_frames
):
    errors = emt_model.info["training_errors"]["all"]
    assert errors["forces"]["rmse"] < 50.0  # meV/Å, sigma 50
    assert errors["energy"]["rmse"] < 2.0  # meV/atom, sigma 2
    rng = np.random.default_rng(5)
    held = [emt_labelled(alloy(cu_cell(rng), rng)) for _ in range(2)]
    pred = emt_model.predict(held, std=True)
    z = np.concatenate(
        [
            (p["forces"] - a.get_forces()).ravel() / p["forces_std"].ravel()
            for p, a in zip(pred, held, strict=True)
        ]
    )
    # latent stds without noise: most errors within 3 of them
    assert np.mean(np.abs(z) < 3) > 0.6, np.mean(np.abs(z) < 3)


def test_gap_fit_string_file_round_trip_and_chunks_give_one_model(
    emt_frames, emt_model, tmp_path
):
    cmd = parse_gap_fit_command(
        [
            "at_file=x.xyz",
            "gap={distance_2b "
            + PAIR
            + " : angle_3b "
            + TRIPLET
            + " theta_uniform=0.6}",
            "default_sigma={0.002 0.05 0.05 0.0}",
            "e0_method=average",
        ]
    )
    # one configuration per chunk: the same model. Its weights agree to 1e-6 only:
    # K_mm of 40 close sparse triplets at theta 0.6 is conditioned ~1e11, so
    # rounding in another fold order moves w along near-null directions that
    # predictions do not see; those agree to 1e-9.
    one_chunk = GAP(**cmd.gap_kwargs, chunk_atoms=1).fit(emt_frames).model_
    w, w1 = emt_model.posterior.weights, one_chunk.posterior.weights
    assert np.abs(w - w1).max() < 1e-5 * np.abs(w).max()
    for p, q in zip(
        emt_model.predict(emt_frames), one_chunk.predict(emt_frames), strict=True
    ):
        assert abs(p["energy"] - q["energy"]) < 1e-9  # eV
        scale = np.abs(p["forces"]).max()
        assert np.abs(p["forces"] - q["forces"]).max() < 1e-9 * scale
    emt_model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:  # older gapfits refuse, not misread, it
        assert json.loads(str(z["meta"]))["format_version"] == 7  # with a 2-body term
    back = Model.load(tmp_path / "m.npz")
    assert back.term("angle_3b").kernel == emt_model.term("angle_3b").kernel
    a, b = (m.predict(emt_frames[-1:], std=True)[0] for m in (emt_model, back))
    for key in ("energy", "forces", "stress", "energy_std", "forces_std"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)


def test_theta_fac_scales_each_length_by_its_types_data_range(emt_frames, tmp_path):
    """gap_fit's theta_fac: each triplet type's three lengths are the factor times
    the ranges of its own triplets' descriptor components (gap_fit makes one GP per
    type); the model, of format 8, saves and loads to the same predictions."""
    gap = GAP(soap=None, angle_3b=TRIPLET + " theta_fac=0.5", e0_method="average")
    model = gap.fit(emt_frames).model_
    term = model.term("angle_3b")
    spec = TripletSpec((29, 79), 3.3, 0.3)
    parts = [
        batch_descriptors(spec, make_batch([a], (29, 79), 3.3, triplet_cutoff=3.3))
        for a in emt_frames
    ]
    d = np.concatenate([p[0] for p in parts])
    t = np.concatenate([p[1] for p in parts])
    lengths = term.kernel.lengths(spec.n_types)
    assert len(np.unique(t)) == 6  # every type present
    for ty in range(6):
        want = 0.5 * np.ptp(d[t == ty], axis=0)
        np.testing.assert_allclose(lengths[ty], want, rtol=1e-12)
    assert np.ptp(lengths, axis=0).min() > 0  # the types' lengths differ
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        assert json.loads(str(z["meta"]))["format_version"] == 8
    back = Model.load(tmp_path / "m.npz")
    assert back.term("angle_3b").kernel == term.kernel
    a, b = (m.predict(emt_frames[-1:], std=True)[0] for m in (model, back))
    for key in ("energy", "forces", "forces_std", "stress_std"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    shown = CliRunner().invoke(main, ["info", "--gp-file", str(tmp_path / "m.npz")])
    line = next(x for x in shown.output.splitlines() if "lengths per type" in x)
    assert f"Au-Cu-Au {np.round(lengths[4], 4).tolist()}" in line


def test_active_learning_with_the_3_body_term(tmp_path):
    """Pool mode with a 3-body term: its sparse points span every labelled triplet
    (chosen again when labels leave their range) and the run's model is the fit of
    its labels on its sparse set."""
    gap = GAP(
        soap="cutoff=4.0 n_max=3 l_max=2 n_sparse=24",
        angle_3b="cutoff=3.3 cutoff_transition_width=0.3 n_sparse=30 theta_fac=0.5",
        e0_method="average",
    )
    pool = cu_cells(10, seed=11, labelled=False, rattle=0.12)
    learner = learn_pool(
        tmp_path / "run",
        "emt",
        pool,
        gap,
        n_seed=2,
        batch_size=2,
        budget=6,
        seed=5,
        strategy="uncertainty",
        progress=False,
    )
    term = learner.model.term("angle_3b")
    only = {"angle_3b": (term.spec, term.kernel)}
    d, t = descriptors(gap, only, learner.frames)["angle_3b"]
    assert len(learner.frames) == 6 and set(np.unique(t)) == set(term.sparse_type)
    for ty in np.unique(t):
        have = term.sparse_d[term.sparse_type == ty]
        assert (d[t == ty].min(0) >= have.min(0) - 1e-9).all()
        assert (d[t == ty].max(0) <= have.max(0) + 1e-9).all()
    full = refit(learner.model, learner.frames, chunk_atoms=1)
    for p, q in zip(
        learner.model.predict(learner.frames), full.predict(learner.frames), strict=True
    ):
        assert np.abs(p["forces"] - q["forces"]).max() < 1e-8
    saved = Model.load(tmp_path / "run" / "model.npz")
    assert saved.term("angle_3b").n_sparse == term.n_sparse


def test_update_equals_refit(emt_frames):
    """The rank update (also the K-fold models' path, ``update.frame_rows``) with a
    3-body term."""
    start, rest = emt_frames[:4] + emt_frames[-1:], emt_frames[4:-1]  # Cu, Au in both
    first = GAP(**SETTINGS).fit(start).model_
    added, full = update(first, rest), refit(first, start + rest)
    for p, q in zip(added.predict(rest), full.predict(rest), strict=True):
        assert abs(p["energy"] - q["energy"]) < 1e-8
        assert np.abs(p["forces"] - q["forces"]).max() < 1e-8


def test_dry_run_counts_the_triplets_and_their_sparse_points(emt_frames, emt_model):
    plan = GAP(**SETTINGS).plan(emt_frames)
    spec = emt_model.term("angle_3b").spec
    n = sum(
        len(
            batch_descriptors(
                spec, make_batch([a], spec.species, 3.3, None, True, 3.3)
            )[0]
        )
        for a in emt_frames
    )
    assert plan.n_triplets == n > 0
    assert plan.n_sparse["angle_3b"] == emt_model.term("angle_3b").n_sparse
    assert plan.M == sum(t.n_sparse for t in emt_model.terms)
    assert "triplets (3-body)" in plan.table()


def test_tune_grid_takes_3_body_keys():
    grid = parse_grid(["angle_3b.cutoff=3.0,3.5", "angle_3b.theta_fac=0.4,0.5"])
    assert grid == {
        "angle_3b.cutoff": ["3.0", "3.5"],
        "angle_3b.theta_fac": ["0.4", "0.5"],
    }
    with pytest.raises(GapfitError, match="Did you mean 'n_sparse'"):
        parse_grid(["angle_3b.nsparse=10"])
    point = _with(
        GAP(angle_3b=TRIPLET + " theta_uniform=0.6"), {"angle_3b.theta_fac": "0.4"}
    )
    settings = point._triplet_settings()
    assert settings["theta_fac"] == 0.4 and settings["theta_uniform"] is None
    with pytest.raises(GapfitError, match="no 3-body term; add --angle-3b"):
        _with(GAP(soap="n_max=3 l_max=2"), {"angle_3b.cutoff": "3.0"})
