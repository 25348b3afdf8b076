"""The DTC evidence and hyperparameters chosen by it.

References are independent of ``blocks.py`` / ``distance_2b`` rows: covariances of
energies, forces and virials by autodiff of the kernel sums through the descriptors
(the helpers of ``test_sparse_gp``), dense ``log N(y | 0, C)`` by a Cholesky of the
full covariance, and finite differences.

With every environment a sparse point, DTC equals the exact GP for observations whose
covariance with the latent local energies lies in the span of the sparse kernel
functions: total energies (sums of local energies). Force and virial observations are
derivatives of the local energies, whose kernel functions lie outside that span, so
there the reference is the DTC covariance ``Q + Lambda`` itself, assembled densely
from autodiff ``K_fm``.
"""

import dataclasses

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from test_cli import cu_cell, invoke
from test_sparse_gp import (
    KERNEL,
    PAIR,
    PAIR_KERNEL,
    SPEC,
    _cell,
    _pair_features,
    _pair_k_total,
    _soap_features,
    _soap_k_total,
    _strain,
)

from gapfit import GAP
from gapfit.assembly import padded_batches
from gapfit.blocks import batch_arrays, descriptors_jit
from gapfit.data import Sigmas, frames_from_atoms
from gapfit.distance_2b import cutoff_function, pair_type
from gapfit.errors import GapfitError
from gapfit.evidence import evidence_and_gradient, log_evidence
from gapfit.hyperparameters import (
    BOUND,
    STEP_TOL,
    NoiseGroups,
    delta_bounds,
    maximise,
    statistics,
)
from gapfit.kernels import normalise
from gapfit.model import Model, chunk_indices
from gapfit.neighbours import make_batch
from gapfit.sparse_gp import FOLD_START, Posterior, fold
from gapfit.terms import PairTerm, SoapTerm

SIGMAS = Sigmas(0.01, 0.08, 0.03, {}, per_atom=True)
JITTER = 1e-10
EXACT_JITTER = 1e-12  # every environment a sparse point: K_mm nearly singular
E0 = {29: 0.0, 79: 0.0}
# a point away from the initial values: delta factors (pair, soap), noise factors
LOG_A = jnp.log(jnp.array([1.3, 0.8]))
LOG_S = jnp.log(jnp.array([0.7, 1.6, 1.2, 1.0]))  # energy, force, virial, fixed


@pytest.fixture(scope="module")
def data():
    """Three EMT-labelled Cu/Au cells; two sparse sets of one shape: every
    environment of the cells, and environments elsewhere (three other cells' SOAP,
    distances shifted by 0.03 Å); a jitted dense reference (``_dense``)."""
    cells = [_cell(s) for s in range(3)]
    for at in cells:
        at.get_potential_energy(), at.get_forces(), at.get_stress()
    frames = frames_from_atoms(cells, require=("energy", "forces", "virial"))
    every = _environments(cells)
    soap_elsewhere = _environments([_cell(s) for s in range(10, 13)])[1]
    elsewhere = ((every[0][0] + 0.03, every[0][1]), soap_elsewhere)
    fns = _env_fns(cells)
    dense = jax.jit(lambda xs, pair_z, soap_z: _dense(fns, xs, pair_z, soap_z))
    return cells, frames, every, elsewhere, dense


def _environments(cells):
    """``((r, pair types), (unit SOAP, species))`` of every environment of the
    cells (each distinct distance once: periodic images repeat them)."""
    batch = make_batch(cells, SPEC.species, SPEC.neighbour_cutoff)
    real = batch.atom_mask > 0
    X = np.asarray(descriptors_jit(SPEC, batch_arrays(batch)))[real]
    soap_z = (np.asarray(normalise(jnp.asarray(X))[0]), batch.species[real])
    keep = batch.canonical > 0
    r = np.linalg.norm(batch.D[keep], axis=1)
    t = pair_type(batch.species[batch.centre[keep]], batch.neighbour_species[keep], 2)
    rt = np.unique(np.stack([np.round(r, 10), t], 1), axis=0)
    return (rt[:, 0], rt[:, 1].astype(np.int64)), soap_z


def _stats(frames, pair_z, soap_z, chunk_atoms=8):
    """Streamed statistics of a pair + SOAP model (chunks of ~2 configurations)."""
    terms = (PairTerm(PAIR, PAIR_KERNEL, *pair_z), SoapTerm(SPEC, KERNEL, *soap_z))
    model = Model(terms, SPEC.species, None, E0)
    chunks = chunk_indices([len(f.numbers) for f in frames], chunk_atoms)
    batches = padded_batches(frames, chunks, SPEC.species, SPEC.neighbour_cutoff)
    K_mm = jax.scipy.linalg.block_diag(*(t.K_mm() for t in terms))
    groups = NoiseGroups.of(frames, per_config_type=False)
    return statistics(model, frames, chunks, batches, SIGMAS, groups, K_mm)


def _observations(frames, log_s, with_derivatives=True):
    """Targets ``y`` (energy, forces, Voigt virial per frame) and their noise stds
    with the noise factors ``exp(log_s)`` (energy, force, virial, fixed)."""
    y, sd = [], []
    s_e, s_f, s_w, _ = np.exp(np.asarray(log_s))
    for f in frames:
        se, sf, sw = SIGMAS.for_frame(f)
        v = f.virial
        y += [f.energy]
        sd += [se * s_e]
        if with_derivatives:
            y += list(f.forces.ravel()) + [
                v[0, 0], v[1, 1], v[2, 2], v[1, 2], v[0, 2], v[0, 1]
            ]  # fmt: skip
            sd += [sf * s_f] * f.forces.size + [sw * s_w] * 6
    return np.array(y), np.array(sd)


def _env_fns(cells):
    """Per cell, ``x -> ((pair r, types), (p_hat, species))`` with ``x`` the flat
    positions (3n) then Voigt strain (6)."""
    fns = []
    for at in cells:
        n, fp, fs = len(at), _pair_features(at), _soap_features(at)

        def env(x, n=n, fp=fp, fs=fs):
            pos, eps = x[: 3 * n].reshape(n, 3), _strain(x[3 * n :])
            return fp(pos, eps), fs(pos, eps)

        fns.append(env)
    return fns


def _x0(cells):
    return [
        jnp.concatenate([jnp.asarray(a.positions).ravel(), jnp.zeros(6)]) for a in cells
    ]


def _dense(fns, xs, pair_z, soap_z):
    """Per cell, its environments and ``K_fm (1 + 3n + 6, M)`` at delta0: the
    covariances of its energy, forces and Voigt virial with the local energies at the
    sparse points, by autodiff of the kernel sums through the descriptors."""
    (zr, zt), (zX, zs) = pair_z, soap_z

    def k_fm(x, env):  # (M,) cov(E(x), local energy at z_m)
        (r, t), (p, s) = env(x)
        se = jnp.exp(-((r[:, None] - zr[None]) ** 2) / (2 * PAIR_KERNEL.theta**2))
        kp = cutoff_function(PAIR, r)[:, None] * se * (t[:, None] == zt[None])
        ks = (p @ zX.T) ** KERNEL.zeta * (s[:, None] == zs[None])
        return jnp.concatenate(
            [PAIR_KERNEL.delta**2 * kp.sum(0), KERNEL.delta**2 * ks.sum(0)]
        )

    def rows(x, env):  # energy, then -d/dx: forces (n, 3) and virial (Voigt)
        return jnp.concatenate([k_fm(x, env)[None], -jax.jacfwd(k_fm)(x, env).T])

    return [(env(x), rows(x, env)) for env, x in zip(fns, xs, strict=True)]


def _dense_log_normal(y, C):
    L = np.linalg.cholesky(C)
    alpha = np.linalg.solve(L, y)
    logdet = 2 * np.log(np.diag(L)).sum()
    return -0.5 * (alpha @ alpha + logdet + len(y) * np.log(2 * np.pi))


def test_all_environments_sparse_equals_exact_gp_on_energies(data):
    """DTC evidence with every environment sparse = exact GP evidence (energies)."""
    cells, frames, every, _, dense = data
    energy_only = [dataclasses.replace(f, forces=None, virial=None) for f in frames]
    stats = _stats(energy_only, *every)
    got = float(log_evidence(LOG_A, LOG_S, stats, EXACT_JITTER))

    envs = [env for env, _ in dense(_x0(cells), *every)]
    a_pair, a_soap = np.exp(np.asarray(LOG_A))
    K = np.array(
        [
            [
                a_pair**2 * _pair_k_total(*ea[0], *eb[0])
                + a_soap**2 * _soap_k_total(*ea[1], *eb[1])
                for eb in envs
            ]
            for ea in envs
        ]
    )
    y, sd = _observations(frames, LOG_S, with_derivatives=False)
    want = _dense_log_normal(y, K + np.diag(sd**2))
    assert abs(got - want) < 1e-8 * abs(want), (got, want)


def _k_mm(pair_z, soap_z):
    """Sparse covariances ``(Kp, Ks)`` at delta0, from the kernel formulas."""
    (r, t), (X, s) = pair_z, soap_z
    Kp = PAIR_KERNEL.delta**2 * np.exp(
        -((r[:, None] - r) ** 2) / 2 / PAIR_KERNEL.theta**2
    )
    Ks = KERNEL.delta**2 * (X @ X.T) ** KERNEL.zeta
    return Kp * (t[:, None] == t), Ks * (s[:, None] == s)


def test_streamed_statistics_equal_dense_dtc_evidence(data):
    """Energies, forces and virials, sparse points away from the training
    environments, two chunks, a point away from the initial hyperparameters:
    streamed = dense ``log N(y | 0, K_fm K_mm^-1 K_mf + Lambda)``."""
    cells, frames, _, (pair_z, soap_z), dense = data
    got = float(log_evidence(LOG_A, LOG_S, _stats(frames, pair_z, soap_z), JITTER))

    K_fm = np.concatenate([k for _, k in dense(_x0(cells), pair_z, soap_z)])
    Kp, Ks = _k_mm(pair_z, soap_z)
    a = np.repeat(np.exp(np.asarray(LOG_A)), [len(Kp), len(Ks)])  # delta / delta0
    K_fm = K_fm * a**2
    K_mm = a[:, None] * scipy.linalg.block_diag(Kp, Ks) * a + JITTER * np.eye(len(a))
    Q = K_fm @ np.linalg.solve(K_mm, K_fm.T)
    y, sd = _observations(frames, LOG_S)
    want = _dense_log_normal(y, Q + np.diag(sd**2))
    assert abs(got - want) < 1e-8 * abs(want), (got, want)


def test_gradient_equals_finite_differences(data):
    _, frames, _, elsewhere, _ = data
    stats = _stats(frames, *elsewhere)
    assert int(stats.n[-1]) == 0  # no fixed-sigma group: as maximise evaluates it
    stats, log_s = stats._replace(R=stats.R[:-1], n=stats.n[:-1]), LOG_S[:-1]
    _, (g_a, g_s) = evidence_and_gradient(LOG_A, log_s, stats, JITTER)
    h = 1e-4  # central differences: truncation ~h^2, rounding ~1e-12 / h
    for x, g, which in ((LOG_A, g_a, 0), (log_s, g_s, 1)):
        for k in range(len(x)):
            step = jnp.zeros(len(x)).at[k].set(h)
            args = [LOG_A, log_s]
            args[which] = x + step
            up = log_evidence(*args, stats, JITTER)
            args[which] = x - step
            down = log_evidence(*args, stats, JITTER)
            fd = (up - down) / (2 * h)
            assert abs(g[k] - fd) < 1e-6 * (abs(fd) + 1), (which, k, g[k], fd)


def test_reported_gradient_is_the_one_at_the_optimum(data):
    """``maximise``'s ``gradient``: the largest |d log p / d log factor| at its
    result (nats), leaving out components that push against a bound; its
    quasi-Newton step is below ``STEP_TOL`` at a maximum inside the box."""
    _, frames, _, elsewhere, _ = data
    stats = _stats(frames, *elsewhere)
    opt = maximise(stats, JITTER)
    reduced = stats._replace(R=stats.R[:-1], n=stats.n[:-1])
    _, (g_a, g_s) = evidence_and_gradient(
        jnp.asarray(opt.log_a), jnp.asarray(opt.log_s[:-1]), reduced, JITTER
    )
    g = np.concatenate([g_a, g_s])
    g[list(opt.at_bound)] = 0.0  # none expected; a bound's push is not counted
    assert opt.converged and opt.step < STEP_TOL, opt
    assert opt.gradient == pytest.approx(np.abs(g).max(), rel=1e-6, abs=1e-9)


def test_coincident_sparse_points_stay_finite(data):
    """Half the SOAP sparse points twice: with jitter the evidence and its gradient
    are finite at the corners of the search box (delta up to its jitter bound);
    without jitter the search stops with a GapfitError saying what to do (no NaN)."""
    _, frames, _, (pair_z, soap_z), _ = data
    half = len(soap_z[1]) // 2
    twice = tuple(np.concatenate([z[:half], z[:half]]) for z in soap_z)
    stats = _stats(frames, pair_z, twice)
    with pytest.raises(GapfitError, match="sparse-jitter"):
        maximise(stats, 0.0)
    stats = stats._replace(R=stats.R[:-1], n=stats.n[:-1])  # as maximise evaluates
    top = np.array(delta_bounds(stats, JITTER, 2))
    assert np.all(top > 0)
    for log_a, log_s in (
        (top, np.full(3, BOUND)),
        (top, np.full(3, -BOUND)),
        (np.full(2, -BOUND), np.full(3, BOUND)),
        (np.full(2, -BOUND), np.full(3, -BOUND)),
    ):
        value, grads = evidence_and_gradient(log_a, log_s, stats, JITTER)
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_group_factor_of_few_similar_rows_is_finite():
    """A group's first rows: 8 similar energy-like rows against 1000 sparse points
    (rank 8). Folded into the FOLD_START start they give a finite factor with
    ``R^T R = [A | b]^T [A | b]`` (from a zero start, JAX's CPU QR gave NaN here)."""
    rng = np.random.default_rng(0)
    A = rng.uniform(690, 760, 1000) + rng.normal(0, 10, (8, 1000))
    b = rng.normal(0, 1, 8)
    R = np.asarray(fold(FOLD_START * jnp.eye(1001), jnp.asarray(A), jnp.asarray(b)))
    assert np.all(np.isfinite(R))
    Ab = np.concatenate([A, b[:, None]], axis=1)
    assert np.abs(R.T @ R - Ab.T @ Ab).max() < 1e-10 * np.abs(Ab.T @ Ab).max()


# --- recovery of known hyperparameters, estimator and command line -----------------
SOAP_FIT = {
    "cutoff": 3.5,
    "cutoff_transition_width": 1.0,
    "n_max": 2,
    "l_max": 1,
    "zeta": 2,
    "delta": 0.5,
    "n_sparse": 80,
}
TRUE_DELTA = 0.2  # eV; the fits start at SOAP_FIT's delta 0.5
TRUE_SIGMA = (0.002, 0.03, 0.01)  # eV/atom, eV/Å, eV/atom
START_SIGMA = (0.01, 0.1, 0.003)
E0_CU = {29: 0.0}


@pytest.fixture(scope="module")
def synthetic():
    """Labels drawn from the DTC prior of a SOAP model with delta TRUE_DELTA plus
    noise TRUE_SIGMA: ``y = K_nm w + noise``, ``w ~ N(0, K_mm^-1)``, so that
    ``cov(y) = Q + Lambda`` exactly. The sparse set is the one every fit below picks
    (same descriptors and seed); rows at delta0 scale as (TRUE_DELTA / delta0)^2."""
    rng = np.random.default_rng(7)
    cells = [cu_cell(rng) for _ in range(8)]
    for k, at in enumerate(cells):
        at.info["config_type"] = "ab"[k % 2]
    frames = frames_from_atoms(cells, require=())
    gap = GAP(soap=SOAP_FIT, e0=E0_CU, e0_method="explicit")
    model = gap.fit([dataclasses.replace(f, energy=0.0) for f in frames]).model_
    ratio2 = (TRUE_DELTA / SOAP_FIT["delta"]) ** 2
    K_mm = ratio2 * np.asarray(model.terms[0].K_mm())
    L = np.linalg.cholesky(K_mm + 1e-8 * np.eye(len(K_mm)))
    w = np.linalg.solve(L.T, rng.normal(size=len(K_mm)))  # w ~ N(0, K_mm^-1)
    post = Posterior(jnp.asarray(ratio2 * w), L, L)  # R unused by means
    model = Model(model.terms, model.species, post, model.e0)
    out = []
    for f, pred in zip(frames, model.predict(frames), strict=True):
        n = len(f.numbers)
        s_e, s_f, s_w = TRUE_SIGMA
        noise_w = rng.normal(0, s_w * np.sqrt(n), (3, 3))
        out.append(
            dataclasses.replace(
                f,
                energy=pred["energy"] + rng.normal(0, s_e * np.sqrt(n)),
                forces=pred["forces"] + rng.normal(0, s_f, (n, 3)),
                virial=pred["virial"] + np.triu(noise_w) + np.triu(noise_w, 1).T,
            )
        )
    return out


def test_optimisation_recovers_known_delta_and_sigmas(synthetic):
    gap = GAP(
        soap=SOAP_FIT,
        default_sigma=START_SIGMA,
        e0=E0_CU,
        e0_method="explicit",
        optimise_hyperparameters=True,
    ).fit(synthetic)
    info = gap.model_.info
    record = info["hyperparameters"]
    assert record["converged"], record["message"]
    assert record["final"]["log_evidence"] > record["initial"]["log_evidence"]
    delta = info["settings"]["soap"]["delta"]
    sigma = info["settings"]["default_sigma"]
    assert gap.model_.terms[0].kernel.delta == delta
    # tolerances: ~3 standard errors of the estimates (80 sparse directions for
    # delta, 768 force, 48 virial and 8 energy observations)
    assert abs(delta / TRUE_DELTA - 1) < 0.25, delta
    assert abs(sigma[1] / TRUE_SIGMA[1] - 1) < 0.1, sigma
    assert abs(sigma[2] / TRUE_SIGMA[2] - 1) < 0.35, sigma
    assert abs(np.log(sigma[0] / TRUE_SIGMA[0])) < np.log(3), sigma


def test_command_line_per_config_type_and_refit(synthetic, tmp_path):
    """``gapfit fit --optimise-per-config-type``: the summary prints
    the search, the model stores initial/final values, its settings reproduce the
    model in a fit without search; a configuration's own energy_sigma stays fixed."""
    images = []
    for k, f in enumerate(synthetic):
        at = f.to_atoms()
        at.info.update(energy=f.energy, virial=f.virial)
        at.arrays["forces"] = f.forces
        if k == 0:
            at.info["energy_sigma"] = 0.05
        images.append(at)
    ase.io.write(tmp_path / "train.xyz", images)
    soap = " ".join(f"{k}={v}" for k, v in SOAP_FIT.items())
    result = invoke(
        "fit",
        "--at-file",
        tmp_path / "train.xyz",
        "--gp-file",
        tmp_path / "model.npz",
        "--soap",
        soap,
        "--default-sigma",
        *START_SIGMA,
        "--e0",
        "Cu:0.0",
        "--e0-method",
        "explicit",
        "--optimise-per-config-type",
        "--quiet",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "hyperparameters by evidence (per_config_type" in result.output
    assert "config_type_sigma b: default ->" in result.output
    model = Model.load(tmp_path / "model.npz")
    record, settings = model.info["hyperparameters"], model.info["settings"]
    assert record["converged"], record["message"]
    assert record["observations"]["fixed"] == 1
    assert record["initial"]["delta"]["soap"] == SOAP_FIT["delta"]
    delta = settings["soap"]["delta"]
    assert delta == record["final"]["delta"]["soap"] != SOAP_FIT["delta"]
    assert model.terms[0].kernel.delta == delta
    assert settings["default_sigma"] == list(START_SIGMA)
    assert sorted(settings["config_type_sigma"]) == ["a", "b"]

    refit = GAP(
        soap=settings["soap"],
        default_sigma=settings["default_sigma"],
        config_type_sigma=settings["config_type_sigma"],
        e0={29: 0.0},
        e0_method="explicit",
    ).fit(tmp_path / "train.xyz")
    w, w_ref = model.posterior.weights, refit.model_.posterior.weights
    assert np.abs(w - w_ref).max() < 1e-6 * np.abs(w_ref).max()
