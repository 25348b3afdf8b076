"""Physics of a fitted model: derivatives, symmetries, fit quality, uncertainty.

One small GAP (cutoff 4 Å, n_max 4, l_max 3, 60 sparse points per species) is fitted
once per module on EMT-labelled (``ase.calculators.emt``) rattled and strained fcc
Cu cells plus two Cu/Au alloy cells. Predictions on structures outside the training
set are checked against independent references (``tests/checks.py``): central finite
differences of the energy for forces and stress, and exact symmetry operations
(rotation, reflection, translation, permutation, supercell, choice of cell) for the
energies, forces, stresses and all predicted standard deviations.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.neighborlist import neighbor_list
from checks import (
    CalcFn,
    assert_cell_choice_invariant,
    assert_forces_match_fd,
    assert_permutation_invariant,
    assert_rotation_invariant,
    assert_stress_matches_strain_fd,
    assert_supercell_invariant,
    assert_translation_invariant,
    random_rotation,
)

import gapfit  # noqa: F401  (switches float64 on)
from gapfit.fit import GAP
from gapfit.model import Model

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=4 l_max=3 n_sparse=60"
SIGMA_E, SIGMA_F, SIGMA_V = 0.001, 0.05, 0.05  # GAP's default_sigma (eV/atom, eV/Å)
A_CU = 3.61  # Å, EMT's Cu lattice constant is ~3.59
AU = 79


def cu_cell(
    seed: int,
    a: float = A_CU,
    n_au: int = 0,
    strain: float = 0.02,
    rattle: float = 0.05,
    label: bool = True,
) -> Atoms:
    """fcc 2x2x2 cubic cell (32 atoms), ``n_au`` random Au, random symmetric strain
    (std ``strain``) and rattle (std ``rattle`` Å), wrapped; EMT labels if ``label``."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(2)
    if n_au:
        atoms.numbers[rng.choice(len(atoms), n_au, replace=False)] = AU
    eps = rng.normal(scale=strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps).T, scale_atoms=True)
    atoms.rattle(stdev=rattle, rng=rng)
    atoms.wrap()
    if label:
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
    return atoms


def training_frames() -> list[Atoms]:
    return [cu_cell(seed) for seed in range(10)] + [
        cu_cell(100 + seed, a=3.7, n_au=8) for seed in range(2)
    ]


@pytest.fixture(scope="module")
def training() -> list[Atoms]:
    return training_frames()


@pytest.fixture(scope="module")
def gap(training: list[Atoms]) -> GAP:
    return GAP(soap=SOAP, e0_method="least_squares").fit(training)


@pytest.fixture(scope="module")
def model(gap: GAP) -> Model:
    return gap.model_


def calc(model: Model, std: bool = False) -> CalcFn:
    return lambda atoms: model.predict([atoms], std=std)[0]


# Fresh structures, not in the training set (other seeds).
@pytest.fixture(scope="module")
def cu_test() -> Atoms:
    return cu_cell(12345, label=False)


@pytest.fixture(scope="module")
def alloy_test() -> Atoms:
    return cu_cell(54321, a=3.7, n_au=8, label=False)


@pytest.fixture(scope="module")
def cluster() -> Atoms:
    """A non-periodic 43-atom Cu sphere (r < 4.6 Å) cut from a rattled crystal."""
    bulk_cu = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(3)
    bulk_cu.rattle(stdev=0.05, rng=np.random.default_rng(777))
    centre = bulk_cu.positions[
        np.argmin(
            np.linalg.norm(
                bulk_cu.positions - bulk_cu.cell.array.sum(axis=0) / 2, axis=1
            )
        )
    ]
    keep = np.linalg.norm(bulk_cu.positions - centre, axis=1) < 4.6
    return Atoms(bulk_cu.numbers[keep], positions=bulk_cu.positions[keep] - centre)


# ------------------------------------------------------------ finite differences
# The energy of this model has a rounding-noise floor of ~1e-10 eV: the sparse-GP
# weights reach |w| ~ 3e4 (K_mm has condition ~1e11 at sparse_jitter 1e-8) while local
# energies are ~0.05 eV, so sum_m w_m k_m cancels ~6 digits. A 3-point central FD
# then cannot reach 1e-6 x max|F| at any h (measured 2.4e-6 at h = 1e-4 Å from noise,
# 1.0e-6 at 1e-3 Å from truncation), so the 5-point stencil is used: measured worst
# 1.4e-7 (forces, h = 3e-3 Å) and 1.8e-8 (stress, h = 1e-3) relative to the maximum.
# The cosine weighting is only C^1 at r = cutoff - width and r = cutoff (3 and 4 Å),
# so no pair may cross those radii within the stencil (<= 2h x 4 Å, i.e. 8e-3 Å).
FD_FORCES = {"h": 3e-3, "order": 4, "rtol": 1e-6}
FD_STRESS = {"h": 1e-3, "order": 4, "rtol": 1e-6}


def _assert_away_from_kinks(
    atoms: Atoms, radii: tuple[float, ...] = (3.0, 4.0), margin: float = 0.02
) -> None:
    d = neighbor_list("d", atoms, max(radii) + 1.0)
    gap_ = np.abs(d[:, None] - np.asarray(radii)[None, :]).min()
    assert gap_ > margin, (
        f"a pair lies {gap_:.3g} Å from a C^1 kink of the weighting; finite "
        "differences would be inaccurate there: pick another test structure"
    )


@pytest.mark.parametrize("which", ["cu_test", "alloy_test", "cluster"])
def test_forces_are_minus_energy_gradient(
    model: Model, which: str, request: pytest.FixtureRequest
) -> None:
    atoms = request.getfixturevalue(which)
    _assert_away_from_kinks(atoms)
    worst = assert_forces_match_fd(calc(model), atoms, **FD_FORCES)
    print(f"\n{which}: forces vs FD worst |dF| = {worst:.2e} eV/Å")


@pytest.mark.parametrize("which", ["cu_test", "alloy_test"])
def test_stress_is_strain_derivative(
    model: Model, which: str, request: pytest.FixtureRequest
) -> None:
    atoms = request.getfixturevalue(which)
    _assert_away_from_kinks(atoms)
    worst = assert_stress_matches_strain_fd(calc(model), atoms, **FD_STRESS)
    print(f"\n{which}: stress vs FD worst |ds| = {worst:.2e} eV/Å^3")


# ------------------------------------------------------------------ invariances
def _report(name: str, worst: dict[str, float]) -> None:
    print(f"\n{name}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


# Means are compared to 1e-8 relative (float64 sums in a different order), stds to
# 1e-6 (a DTC variance is a difference of O(prior) terms, so its relative rounding
# error is larger where the variance is small).
RTOL, RTOL_STD = 1e-8, 1e-6


@pytest.mark.parametrize("kind", ["proper", "improper", "quarter_turn"])
def test_rotation_invariance(model: Model, cu_test: Atoms, kind: str) -> None:
    """SOAP is O(3)-invariant: a proper or improper rotation of positions and cell
    rotates forces and stress and leaves energies and stds unchanged. A 90° turn
    (a signed permutation) must permute the per-component stds exactly."""
    rng = np.random.default_rng(11)
    R = {
        "proper": random_rotation(rng),
        "improper": -random_rotation(rng),
        "quarter_turn": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    }[kind]
    worst = assert_rotation_invariant(
        calc(model, std=True), cu_test, R, RTOL, rtol_std=RTOL_STD
    )
    _report(f"rotation {kind}", worst)


def test_translation_invariance(model: Model, cu_test: Atoms) -> None:
    worst = assert_translation_invariant(
        calc(model, std=True),
        cu_test,
        [1.3, -0.7, 2.9],
        wrap=True,
        rtol=RTOL,
        rtol_std=RTOL_STD,
    )
    _report("translation + wrap", worst)


def test_permutation_invariance(model: Model, alloy_test: Atoms) -> None:
    perm = np.random.default_rng(5).permutation(len(alloy_test))
    worst = assert_permutation_invariant(
        calc(model, std=True), alloy_test, perm, RTOL, rtol_std=RTOL_STD
    )
    _report("permutation", worst)


def test_supercell_gives_n_times_energy_same_forces_and_stress(
    model: Model, cu_test: Atoms
) -> None:
    worst = assert_supercell_invariant(
        calc(model, std=True), cu_test, (2, 1, 1), RTOL, rtol_std=RTOL_STD
    )
    _report("2x1x1 supercell", worst)


def test_equivalent_cell_gives_same_results(model: Model, cu_test: Atoms) -> None:
    """a' = a + b (unimodular), positions wrapped: the same crystal."""
    M = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    worst = assert_cell_choice_invariant(
        calc(model, std=True), cu_test, M, RTOL, rtol_std=RTOL_STD
    )
    _report("cell a+b", worst)


def test_cluster_is_finite_has_no_stress_and_is_invariant(
    model: Model, cluster: Atoms
) -> None:
    fn = calc(model, std=True)
    res = fn(cluster)
    assert "stress" not in res and "stress_std" not in res
    for key in (
        "energy",
        "energies",
        "forces",
        "virial",
        "energy_std",
        "energies_std",
        "forces_std",
    ):
        assert np.isfinite(res[key]).all(), f"cluster {key} is not finite"
    assert res["energy_std"] > 0 and (res["forces_std"] > 0).all()
    # net force on an isolated cluster vanishes (translation invariance of E), to
    # rounding: the sum cancels terms of size |w| |k|, and the weights of an
    # ill-conditioned K_mm are large
    net = np.abs(res["forces"].sum(axis=0)).max()
    assert net <= 1e-9 * np.abs(res["forces"]).max(), f"net force {net:.2e}"
    rng = np.random.default_rng(3)
    worst = assert_rotation_invariant(
        fn, cluster, random_rotation(rng), RTOL, rtol_std=RTOL_STD
    )
    worst |= assert_translation_invariant(
        fn, cluster, [10.0, -3.0, 0.5], wrap=False, rtol=RTOL, rtol_std=RTOL_STD
    )
    worst |= assert_permutation_invariant(
        fn, cluster, rng.permutation(len(cluster)), RTOL, rtol_std=RTOL_STD
    )
    _report("cluster rotation/translation/permutation", worst)


# -------------------------------------------------------------- fit and its sigmas
def test_fit_reproduces_training_data_within_sigmas(
    model: Model, training: list[Atoms]
) -> None:
    """Criterion (stated honestly). Under a well-specified GP the training residuals
    have std sigma*sqrt(1 - leverage) <= sigma. This model is deliberately tiny, so
    part of each residual is model error, and the per-config 3-sigma band on energies
    (sigma_E = 0.001 eV/atom x sqrt(n) per config, i.e. 0.18 meV/atom for 32 atoms)
    is *not* robust: over four training sets (seed offsets 0, 1000, 2000, 3000) the
    largest |dE|/sigma_E was 2.9, 1.3, 4.2, 3.1 and the rms 1.3, 0.7, 1.6, 1.5.
    We require:
      * force RMSE over all training components < sigma_F (0.05 eV/Å),
      * virial RMSE per atom over all 9 components < sigma_V (0.05 eV/atom),
      * energies: rms(dE/sigma_E) <= 2 and max |dE/sigma_E| <= 5 (residuals of the
        order of their sigma; a broken fit is off by orders of magnitude),
      * and the fit explains the data: force RMSE < 0.3 x rms(EMT forces).
    """
    preds = model.predict(training)
    z, dF, dW, F = [], [], [], []
    for atoms, p in zip(training, preds, strict=True):
        n = len(atoms)
        z.append((p["energy"] - atoms.get_potential_energy()) / (SIGMA_E * np.sqrt(n)))
        dF.append(p["forces"] - atoms.get_forces())
        F.append(atoms.get_forces())
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
        dW.append((p["virial"] - virial) / n)
    z = np.array(z)
    rmse_F = float(np.sqrt(np.mean(np.square(dF))))
    rmse_W = float(np.sqrt(np.mean(np.square(dW))))
    rms_F = float(np.sqrt(np.mean(np.square(F))))
    print(
        f"\ntraining: max|z_E| {np.abs(z).max():.2f}, rms z_E "
        f"{np.sqrt(np.mean(z**2)):.2f}, force RMSE {rmse_F:.4f} eV/Å "
        f"(rms force {rms_F:.3f}), virial RMSE {rmse_W:.4f} eV/atom"
    )
    assert rmse_F < SIGMA_F, f"force RMSE {rmse_F:.4f} eV/Å >= sigma_F {SIGMA_F}"
    assert rmse_W < SIGMA_V, f"virial RMSE {rmse_W:.4f} eV/atom >= sigma_V {SIGMA_V}"
    assert np.sqrt(np.mean(z**2)) <= 2.0, f"energy residuals / sigma_E: {z.round(2)}"
    assert np.abs(z).max() <= 5.0, f"energy residuals / sigma_E: {z.round(2)}"
    assert rmse_F < 0.3 * rms_F, f"force RMSE {rmse_F:.3f} vs rms force {rms_F:.3f}"


def test_energy_std_grows_far_from_training_data(model: Model, cu_test: Atoms) -> None:
    """A cell compressed to a = 3.0 Å (EMT's a is 3.6 Å) lies far from every training
    environment; its energy std must exceed that of a training-like cell, here by
    more than 10x (measured: ~450x)."""
    near = model.predict([cu_test], std=True)[0]["energy_std"]
    far_atoms = cu_cell(2024, a=3.0, label=False)
    far = model.predict([far_atoms], std=True)[0]["energy_std"]
    print(f"\nenergy std: training-like {near:.4g} eV, compressed {far:.4g} eV")
    assert np.isfinite(far) and far > 10 * near, (near, far)


# ------------------------------------------------------- the checks themselves
def _lj(atoms: Atoms) -> dict:
    """ASE's smooth Lennard-Jones (independent code) in the calc_fn format."""
    a = atoms.copy()
    a.calc = LennardJones(sigma=2.3, epsilon=0.1, rc=5.0, ro=4.0, smooth=True)
    return {
        "energy": a.get_potential_energy(),
        "energies": a.get_potential_energies(),
        "forces": a.get_forces(),
        "stress": a.get_stress(),
    }


def test_checks_pass_a_correct_potential_and_catch_broken_ones(cu_test: Atoms) -> None:
    """The helpers accept ASE's LJ and reject it with a flipped force sign, a stress
    off by 1%, forces that do not rotate, or an extensive quantity made intensive."""
    assert_forces_match_fd(_lj, cu_test, h=1e-3, order=4, rtol=1e-6, indices=[0, 7])
    assert_stress_matches_strain_fd(_lj, cu_test, h=1e-4, order=4, rtol=1e-6)
    R = random_rotation(np.random.default_rng(0))
    assert_rotation_invariant(_lj, cu_test, R)
    assert_supercell_invariant(_lj, cu_test, (1, 2, 1))

    def flipped(a: Atoms) -> dict:
        return {**_lj(a), "forces": -_lj(a)["forces"]}

    def stress_off(a: Atoms) -> dict:
        return {**_lj(a), "stress": 1.01 * _lj(a)["stress"]}

    def fixed_frame(a: Atoms) -> dict:  # forces of the unrotated structure
        return {**_lj(a), "forces": _lj(cu_test)["forces"]}

    def intensive(a: Atoms) -> dict:
        return {**_lj(a), "energy": _lj(a)["energy"] / len(a)}

    with pytest.raises(AssertionError, match="worst"):
        assert_forces_match_fd(flipped, cu_test, h=1e-3, order=4, indices=[0])
    with pytest.raises(AssertionError, match="worst"):
        assert_stress_matches_strain_fd(stress_off, cu_test, h=1e-4, order=4)
    with pytest.raises(AssertionError, match="rotation forces"):
        assert_rotation_invariant(fixed_frame, cu_test, R)
    with pytest.raises(AssertionError, match="supercell .* energy"):
        assert_supercell_invariant(intensive, cu_test, (2, 1, 1))
