"""dscribe as the selectable backend of the fit's descriptor pass."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from gapfit import GapfitError
from gapfit.data import frames_from_atoms
from gapfit.dscribe_backend import soap_values
from gapfit.fit import GAP
from gapfit.soap import SoapSpec

SOAP = "cutoff=3.8 n_max=4 l_max=3 n_sparse=24 weighting=poly sparse_method=cur_points"


def _labelled(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        at = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.normal(), cubic=True).repeat(2)
        at.positions += rng.normal(0, 0.08, at.positions.shape)  # some leave the cell
        at.calc = EMT()
        at.get_potential_energy()
        out.append(at)
    return out


def test_values_match_jax_soap_for_mixed_periodic_and_molecules():
    """Frames in input order, periodic (unwrapped positions) and non-periodic mixed."""
    cu = _labelled(2, 3)
    mol = molecule("CH3OH")
    mol.calc = EMT()
    mol.get_potential_energy()
    frames = frames_from_atoms([cu[0], mol, cu[1]], require=("energy",))
    spec = SoapSpec(
        species=(1, 6, 8, 29),
        cutoff=3.5,
        n_max=3,
        l_max=2,
        atom_sigma=0.5,
        weighting="none",
    )
    ours = soap_values(spec, frames)
    from gapfit.blocks import batch_arrays, descriptors_jit
    from gapfit.neighbours import make_batch

    batch = make_batch(
        frames, spec.species, spec.neighbour_cutoff, [f.where for f in frames]
    )
    jax_values = np.asarray(descriptors_jit(spec, batch_arrays(batch)))
    jax_values = jax_values[batch.atom_mask > 0]
    assert ours.shape == jax_values.shape
    assert np.abs(ours - jax_values).max() <= 1e-10 * np.abs(jax_values).max()


def test_fit_with_dscribe_backend_equals_jax_backend():
    frames = _labelled(5, 7)
    jax_fit = GAP(soap=SOAP, e0_method="average").fit(frames)
    dscribe_fit = GAP(soap=SOAP, e0_method="average", descriptor_backend="dscribe")
    dscribe_fit.fit(frames)
    a, b = jax_fit.model_, dscribe_fit.model_
    np.testing.assert_allclose(
        b.term("soap").arrays()["sparse_X"],
        a.term("soap").arrays()["sparse_X"],
        rtol=0,
        atol=1e-10,
    )
    # the weights are ill-conditioned (|w| ~ 1e4 from near-collinear sparse points),
    # so compare what they produce: energies and forces
    pa, pb = a.predict(frames), b.predict(frames)
    for ra, rb in zip(pa, pb, strict=True):
        assert abs(ra["energy"] - rb["energy"]) <= 1e-8 * abs(ra["energy"])
        np.testing.assert_allclose(rb["forces"], ra["forces"], rtol=0, atol=1e-8)
    assert b.info["settings"]["descriptor_backend"] == "dscribe"


def test_dscribe_backend_rejects_cosine_and_unknown_names():
    frames = _labelled(2, 1)
    with pytest.raises(GapfitError, match="weighting=poly or none"):
        GAP(
            soap="cutoff=3.8 n_max=3 l_max=2 n_sparse=4", descriptor_backend="dscribe"
        ).fit(frames)
    with pytest.raises(GapfitError, match="not one of jax, dscribe"):
        GAP(soap=SOAP, e0_method="average", descriptor_backend="quip").fit(frames)


def test_cli_descriptor_backend_option(tmp_path):
    import ase.io
    from click.testing import CliRunner

    from gapfit.cli import main
    from gapfit.model import Model

    ase.io.write(tmp_path / "train.xyz", _labelled(3, 2))
    args = [
        "fit",
        "--at-file",
        str(tmp_path / "train.xyz"),
        "--gp-file",
        str(tmp_path / "m.npz"),
        "--soap",
        SOAP,
        "--e0-method",
        "average",
        "--quiet",
        "--descriptor-backend",
        "dscribe",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    model = Model.load(tmp_path / "m.npz")
    assert model.info["settings"]["descriptor_backend"] == "dscribe"
    bad = CliRunner().invoke(main, args[:-1] + ["quip"])
    assert bad.exit_code == 2 and "quip" in bad.output
