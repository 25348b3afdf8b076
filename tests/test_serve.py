"""``gapfit serve``: the model as the force engine of an i-PI driver (here ASE's
SocketIOCalculator), giving the same numbers as in process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.socketio import SocketIOCalculator
from click.testing import CliRunner
from emt_cells import SOAP, cu_cells

from gapfit import GAP, GAPCalculator, Model
from gapfit.cli import main


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    GAP(soap=SOAP, e0_method="average").fit(cu_cells(4, seed=21)).save(path)
    return path


def test_serve_answers_a_socket_driver(model_file: Path, tmp_path: Path) -> None:
    cells = cu_cells(2, seed=22, labelled=False)
    start, log = tmp_path / "start.xyz", tmp_path / "steps.csv"
    ase.io.write(start, cells[0])
    name = f"gapfit-test-{os.getpid()}"

    def launch(atoms, properties, port, unixsocket):
        args = ["serve", start, "--gp-file", model_file, "--unixsocket", unixsocket]
        code = "from gapfit.cli import main; main()"
        command = [sys.executable, "-c", code, *map(str, args), "--std", "--log", log]
        return subprocess.Popen(list(map(str, command)))

    here = GAPCalculator(Model.load(model_file), std=False)
    atoms = cells[0].copy()
    with SocketIOCalculator(unixsocket=name, launch_client=launch) as driver:
        atoms.calc = driver
        for cell in cells:  # the driver moves atoms and cell between steps
            atoms.positions, atoms.cell = cell.positions, cell.cell
            ref = cell.copy()
            ref.calc = here
            assert atoms.get_potential_energy() == pytest.approx(
                ref.get_potential_energy(), abs=1e-10
            )
            np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-10)
            np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), atol=1e-12)
        proc = driver.server.proc
    assert proc.wait(timeout=60) == 0
    with log.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert all(float(r["max_force_std_eV_per_A"]) > 0 for r in rows)


def test_serve_without_a_driver_says_what_to_do(model_file: Path, tmp_path) -> None:
    start = tmp_path / "start.xyz"
    ase.io.write(start, cu_cells(1, seed=23, labelled=False))
    args = ["serve", str(start), "--gp-file", str(model_file), "--wait", "0"]
    result = CliRunner().invoke(main, [*args, "--unixsocket", "gapfit-nobody-here"])
    assert result.exit_code == 2
    assert "no i-PI driver is listening" in result.output
    assert "start the driver" in result.output
