"""Tests for gapfit.data: reading, validation, sigmas and e0.

Reference labels come from ASE's EMT calculator (an independent implementation);
the virial reference is -stress * volume computed directly from EMT's stress.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from gapfit.data import (
    Frame,
    LabelKeys,
    Sigmas,
    check_species,
    fit_e0,
    frames_from_atoms,
    parse_config_type_sigma,
    parse_e0,
    read_frames,
)
from gapfit.errors import GapfitError


def _cu(seed: int, label: bool = True) -> Atoms:
    """Rattled 4-atom fcc Cu cell, labelled by EMT (energy, forces, stress)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.05, rng=np.random.default_rng(seed))
    if label:
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
    return atoms


def _labelled(atoms: Atoms, **results) -> Atoms:
    """Attach results via a SinglePointCalculator (as ase.io.read does)."""
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _write(tmp_path, frames, name="train.xyz"):
    path = tmp_path / name
    write(path, frames, format="extxyz")
    return path


@pytest.fixture
def cu_file(tmp_path):
    return _write(tmp_path, [_cu(seed) for seed in range(3)])


# ---------------------------------------------------------------- round trips


def test_round_trip_emt_labels(tmp_path):
    images = [_cu(seed) for seed in range(3)]
    path = _write(tmp_path, images)
    frames = read_frames(path, require=("energy", "forces"))
    assert len(frames) == 3
    for frame, atoms in zip(frames, images, strict=True):
        assert frame.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(frame.forces, atoms.get_forces(), atol=1e-7)
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()  # eV
        np.testing.assert_allclose(frame.virial, virial, atol=1e-7)
        assert frame.config_type == "default"
        assert frame.pbc.all()
        np.testing.assert_array_equal(frame.numbers, atoms.numbers)
    assert frames[1].where == f"{path}, config 1 (line 7)"
    assert not frames[0].positions.flags.writeable
    back = frames[0].to_atoms()
    assert back.calc is None and back.info["config_type"] == "default"
    np.testing.assert_allclose(back.positions, images[0].positions, atol=1e-7)


def test_index_selects_configs(cu_file):
    frames = read_frames(cu_file, index="-1")
    assert len(frames) == 1 and "config 2 (line 13)" in frames[0].where


def test_custom_key_names(tmp_path):
    images = []
    for seed in range(2):
        ref = _cu(seed)
        atoms = _cu(seed, label=False)
        atoms.info["dft_energy"] = ref.get_potential_energy()
        atoms.new_array("dft_forces", ref.get_forces())
        atoms.info["dft_virial"] = -ref.get_stress(voigt=False) * ref.get_volume()
        atoms.info["kind"] = "bulk"
        images.append(atoms)
    path = _write(tmp_path, images)
    keys = LabelKeys(
        energy="dft_energy",
        forces="dft_forces",
        virial="dft_virial",
        config_type="kind",
    )
    frames = read_frames(path, keys=keys, require=("energy", "forces", "virial"))
    assert frames[1].energy == pytest.approx(images[1].info["dft_energy"])
    np.testing.assert_allclose(
        frames[1].forces, images[1].arrays["dft_forces"], atol=1e-7
    )  # extxyz writes 8 decimals
    np.testing.assert_allclose(
        frames[1].virial, images[1].info["dft_virial"], atol=1e-10
    )
    assert frames[0].config_type == "bulk"


def test_molecule_without_cell_keeps_energy(tmp_path):
    mol = molecule("H2O")
    mol.calc = EMT()
    energy = mol.get_potential_energy()
    frames = read_frames(_write(tmp_path, [mol]), require=("energy", "forces"))
    assert frames[0].energy == pytest.approx(energy)
    assert not frames[0].pbc.any() and frames[0].virial is None


def test_config_type_and_per_config_sigmas(tmp_path):
    atoms = _cu(0)
    atoms.info.update(config_type="surface", energy_sigma=0.02, force_sigma=0.3)
    frame = read_frames(_write(tmp_path, [atoms, _cu(1)]))[0]
    assert frame.config_type == "surface"
    assert (frame.sigma_energy, frame.sigma_force, frame.sigma_virial) == (
        0.02,
        0.3,
        None,
    )


def test_sigmas_for_frame():
    atoms = _cu(0)
    atoms.info["config_type"] = "surface"
    surface = frames_from_atoms([atoms])[0]
    plain = frames_from_atoms([_cu(1)])[0]
    sigmas = Sigmas(
        energy=0.001,
        force=0.05,
        virial=0.04,
        per_config_type={"surface": (0.01, 0.2, 0.3)},
    )
    # 4 atoms: per-atom sigmas scale by sqrt(4) = 2
    assert sigmas.for_frame(plain) == pytest.approx((0.002, 0.05, 0.08))
    assert sigmas.for_frame(surface) == pytest.approx((0.02, 0.2, 0.6))
    absolute = Sigmas(energy=0.001, force=0.05, virial=0.04, per_atom=False)
    assert absolute.for_frame(plain) == pytest.approx((0.001, 0.05, 0.04))
    atoms.info.update(energy_sigma=0.5, virial_sigma=0.7)  # absolute, not scaled
    own = frames_from_atoms([atoms])[0]
    assert sigmas.for_frame(own) == pytest.approx((0.5, 0.2, 0.7))


def test_parse_config_type_sigma():
    parsed = parse_config_type_sigma("bulk:0.001:0.05:0.05:0.0:surface:0.002:0.1:0.1:0")
    assert parsed == {"bulk": (0.001, 0.05, 0.05), "surface": (0.002, 0.1, 0.1)}
    with pytest.raises(GapfitError, match="groups of 5"):
        parse_config_type_sigma("bulk:0.001:0.05:0.05")
    with pytest.raises(GapfitError, match="virial sigma of 'bulk'"):
        parse_config_type_sigma("bulk:0.001:0.05:0:0")


def test_parse_e0_forms():
    assert parse_e0("Cu:-0.1 Au:-0.2") == {29: -0.1, 79: -0.2}
    assert parse_e0("Cu:-0.1:Au:-0.2") == {29: -0.1, 79: -0.2}


# ---------------------------------------------------------------- bad input


def test_missing_energy_names_present_keys(tmp_path):
    atoms = _cu(0, label=False)
    atoms.info["dft_energy"] = -1.0
    with pytest.raises(GapfitError) as err:
        read_frames(_write(tmp_path, [atoms]))
    msg = str(err.value)
    assert "config 0 (line 1)" in msg and "'dft_energy'" in msg
    assert "--energy-parameter-name" in msg and "Did you mean 'dft_energy'" in msg


def test_missing_forces(tmp_path):
    atoms = _cu(0, label=False)
    atoms.info["energy"] = -1.0
    with pytest.raises(GapfitError, match="--force-parameter-name") as err:
        read_frames(_write(tmp_path, [atoms]), require=("energy", "forces"))
    assert "no forces found under key 'forces'" in str(err.value)


def test_nan_energy():
    atoms = _labelled(_cu(0, label=False), energy=float("nan"))
    with pytest.raises(GapfitError, match=r"frames\[0\]: energy is not finite"):
        frames_from_atoms([atoms])


def test_inf_force_names_atom():
    forces = np.zeros((4, 3))
    forces[2, 1] = np.inf
    atoms = _labelled(_cu(0, label=False), energy=-1.0, forces=forces)
    with pytest.raises(GapfitError, match="forces of atom 2 are not finite"):
        frames_from_atoms([atoms], require=("energy", "forces"))


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(GapfitError, match="not found"):
        read_frames(tmp_path / "nope.xyz")
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(GapfitError, match="empty"):
        read_frames(tmp_path / "empty.xyz")
    (tmp_path / "blank.xyz").write_text("\n\n")
    with pytest.raises(GapfitError, match="no configurations"):
        read_frames(tmp_path / "blank.xyz")


def test_truncated_last_config(cu_file):
    lines = cu_file.read_text().splitlines(keepends=True)
    cu_file.write_text("".join(lines[:-2]))  # config 2 keeps 2 of its 4 atoms
    with pytest.raises(GapfitError) as err:
        read_frames(cu_file)
    msg = str(err.value)
    assert "config 2 (line 13)" in msg and "says 4 atoms but only 2" in msg


def test_truncated_middle_config(cu_file):
    lines = cu_file.read_text().splitlines(keepends=True)
    del lines[9:11]  # config 1 (lines 7-12) loses its last 2 atoms
    cu_file.write_text("".join(lines))
    with pytest.raises(GapfitError, match=r"config 1 \(line 7\).*only 2 atom lines"):
        read_frames(cu_file)


def test_blank_line_mid_file(cu_file):
    lines = cu_file.read_text().splitlines(keepends=True)
    cu_file.write_text("".join(lines[:6] + ["\n"] + lines[6:]))
    with pytest.raises(GapfitError, match="line 7: blank line before more data"):
        read_frames(cu_file)


def test_bad_index(cu_file):
    with pytest.raises(GapfitError, match="not an ASE index"):
        read_frames(cu_file, index="abc")


def test_non_numeric_position(cu_file):
    lines = cu_file.read_text().splitlines(keepends=True)
    parts = lines[8].split()
    parts[2] = "abc"
    lines[8] = " ".join(parts) + "\n"
    cu_file.write_text("".join(lines))
    with pytest.raises(GapfitError, match=r"config 1 \(line 7\): could not be parsed"):
        read_frames(cu_file)


def test_wrong_force_shape():
    atoms = _cu(0, label=False)
    atoms.info["energy"] = -1.0
    atoms.new_array("forces", np.zeros((4, 2)))
    with pytest.raises(GapfitError, match=r"shape \(4, 2\), expected \(4, 3\)"):
        frames_from_atoms([atoms])


def test_wrong_virial_size():
    atoms = _cu(0, label=False)
    atoms.info.update(energy=-1.0, virial=np.zeros(5))
    with pytest.raises(GapfitError, match="expected 9 numbers"):
        frames_from_atoms([atoms])


def test_zero_atoms():
    with pytest.raises(GapfitError, match=r"frames\[0\]: config has zero atoms"):
        frames_from_atoms([Atoms()])


def test_overlapping_atoms():
    close = Atoms("Cu2", positions=[[0, 0, 0], [0.3, 0, 0]], info={"energy": -1.0})
    with pytest.raises(GapfitError, match=r"atoms 0 and 1 are 0\.300 Å apart"):
        frames_from_atoms([close])
    # closer than 0.5 Å only through the periodic boundary
    wrapped = Atoms(
        "Cu2",
        positions=[[0.1, 1, 1], [3.5, 1, 1]],
        cell=[3.6] * 3,
        pbc=True,
        info={"energy": -1.0},
    )
    with pytest.raises(GapfitError, match=r"0\.200 Å apart"):
        frames_from_atoms([wrapped])


def test_degenerate_periodic_cell():
    atoms = Atoms("Cu", pbc=True, info={"energy": -1.0})
    with pytest.raises(GapfitError, match="pbc=False"):
        frames_from_atoms([atoms])
    flat = Atoms(
        "Cu", cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True, info={"energy": -1.0}
    )
    with pytest.raises(GapfitError, match="linearly dependent"):
        frames_from_atoms([flat])


def test_stress_on_molecule_rejected():
    mol = _labelled(molecule("H2O"), energy=-1.0, stress=np.zeros(6))
    with pytest.raises(GapfitError, match="volume is undefined"):
        frames_from_atoms([mol])


def test_stress_virial_sign_flip(tmp_path):
    atoms = _cu(0)
    atoms.info["virial"] = atoms.get_stress(voigt=False) * atoms.get_volume()
    with pytest.raises(GapfitError) as err:
        read_frames(_write(tmp_path, [atoms]))
    msg = str(err.value)
    assert "opposite signs" in msg and "virial = -stress * volume" in msg


def test_stress_virial_missing_volume():
    atoms = _cu(0)
    atoms.info["virial"] = -atoms.get_stress(voigt=False)
    with pytest.raises(GapfitError, match="missing the volume factor"):
        frames_from_atoms([atoms])


def test_bad_sigmas():
    with pytest.raises(GapfitError, match="default energy sigma.*found 0.0"):
        Sigmas(energy=0.0)
    with pytest.raises(GapfitError, match="'bulk' force sigma.*nan"):
        Sigmas(per_config_type={"bulk": (0.001, float("nan"), 0.05)})
    atoms = _cu(0)
    atoms.info["force_sigma"] = -1.0
    with pytest.raises(GapfitError, match=r"frames\[0\]: info 'force_sigma'"):
        frames_from_atoms([atoms])


def test_unknown_species():
    frames = frames_from_atoms([_cu(0)])
    with pytest.raises(GapfitError) as err:
        check_species(frames, [79])
    msg = str(err.value)
    assert "frames[0]" in msg and "contains Cu" in msg and "species: Au" in msg
    check_species(frames, [29, 79])


def test_bad_e0_symbol():
    with pytest.raises(GapfitError, match="'Auu' is not an element.*Au"):
        parse_e0("Cu:-0.1 Auu:-0.2")
    with pytest.raises(GapfitError, match="Did you mean Cu"):
        parse_e0("cu:-0.1")


# ---------------------------------------------------------------- e0


def _frame(symbols: str, energy: float, config_type: str = "default") -> Frame:
    """Well-separated atoms on a line, no cell, with a given total energy."""
    positions = [[3.0 * i, 0, 0] for i in range(len(Atoms(symbols)))]
    atoms = Atoms(
        symbols,
        positions=positions,
        info={"energy": energy, "config_type": config_type},
    )
    return frames_from_atoms([atoms])[0]


E0_REF = {29: -0.3, 79: -0.7, 47: -0.5}  # eV, synthetic


def _synthetic(symbols: str) -> Frame:
    """E = Σ_Z n_Z e0_Z exactly."""
    return _frame(symbols, sum(E0_REF[z] for z in Atoms(symbols).numbers))


def test_fit_e0_isolated():
    frames = [
        _frame("Cu", -0.3, "isolated_atom"),
        _frame("Au", -0.7, "isolated_atom"),
        _frame("CuAu", -5.0),
    ]
    assert fit_e0(frames, "isolated", [29, 79]) == {29: -0.3, 79: -0.7}
    # explicit values override the method's
    assert fit_e0(frames, "isolated", [29, 79], {79: -1.0}) == {29: -0.3, 79: -1.0}


def test_fit_e0_isolated_missing_species():
    frames = [_frame("Cu", -0.3, "isolated_atom"), _frame("CuAu", -5.0)]
    with pytest.raises(GapfitError) as err:
        fit_e0(frames, "isolated", [29, 79])
    msg = str(err.value)
    assert "for Au" in msg and "--e0-method average or least_squares" in msg


def test_fit_e0_average():
    frames = [_frame("Cu2", -2.0), _frame("CuAu3", -8.0), _frame("Au", -0.5)]
    mean = np.mean([-1.0, -2.0, -0.5])  # gap_fit: mean of E / n_atoms
    assert fit_e0(frames, "average", [29, 79]) == pytest.approx({29: mean, 79: mean})


def test_fit_e0_least_squares_recovers_e0():
    frames = [_synthetic(s) for s in ("Cu2Au", "CuAg3", "AuAg", "Cu4AuAg2", "Au2")]
    e0 = fit_e0(frames, "least_squares", [29, 47, 79])
    assert e0 == pytest.approx(E0_REF, abs=1e-12)


def test_fit_e0_explicit():
    frames = [_frame("CuAu", -5.0)]
    assert fit_e0(frames, "explicit", [29, 79], parse_e0("Cu:-0.1 Au:-0.2")) == {
        29: -0.1,
        79: -0.2,
    }
    with pytest.raises(GapfitError, match="no e0 given for Au"):
        fit_e0(frames, "explicit", [29, 79], {29: -0.1})
    with pytest.raises(GapfitError, match="unknown"):
        fit_e0(frames, "median", [29, 79])
