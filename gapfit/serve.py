"""A model as a force engine over the i-PI socket protocol: i-PI (path-integral MD,
replica exchange, its thermostats and barostats) or ASE's ``SocketIOCalculator``
drive the dynamics, and gapfit computes energy, forces and virial in its own process.

The driver sends the cell and positions each step; the atomic numbers come from a
structure file in the driver's atom order (i-PI's initial configuration). ASE's
``SocketClient`` speaks the protocol. The client retries the connection until
``wait`` seconds have passed, so it may start before the driver. With ``std`` it
also computes the predictive stds and logs, per step, the energy, its std and the
largest force std (eV, eV/Å) as CSV, for spotting steps that left the training
data.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import ase
import numpy as np
from ase.calculators.socketio import SocketClient

from gapfit.calculator import GAPCalculator
from gapfit.errors import GapfitError
from gapfit.model import Model, atomic_write

RETRY_S = 0.5  # between connection attempts


def connect(
    host: str, port: int | None, unixsocket: str | None, wait: float
) -> SocketClient:
    """An i-PI client connected to the driver, retried for up to ``wait`` s.

    Raises:
        GapfitError: no driver listening after ``wait`` s.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return SocketClient(host=host, port=port, unixsocket=unixsocket)
        except (ConnectionRefusedError, FileNotFoundError) as err:
            if time.monotonic() >= deadline:
                where = (
                    f"unix socket {unixsocket!r}" if unixsocket else f"{host}:{port}"
                )
                raise GapfitError(
                    f"no i-PI driver is listening on {where} after {wait:g} s "
                    f"({err}); start the driver (i-PI, ASE's SocketIOCalculator) "
                    "first or raise --wait."
                ) from None
            time.sleep(RETRY_S)


def serve(
    model: Model,
    atoms: ase.Atoms,
    host: str = "localhost",
    port: int | None = None,
    unixsocket: str | None = None,
    std: bool = False,
    log: str | os.PathLike | None = None,
    wait: float = 60.0,
) -> int:
    """Answer the driver's force requests for ``atoms`` (numbers, pbc; the driver
    sets cell and positions) until it says exit; returns the steps served.

    Args:
        std: compute the stds of every quantity too (about 20 times the mean's cost)
            and log them; False: means only.
        log: CSV file of the steps (step, energy eV, energy_std eV, max force std
            eV/Å; stds empty without ``std``), written when the driver exits.
        wait: seconds to keep trying to connect.
    """
    atoms = atoms.copy()
    atoms.calc = GAPCalculator(model, std="all" if std else False)
    client = connect(host, port, unixsocket, wait)
    rows: list[list] = []
    try:
        for _ in client.irun(atoms, use_stress=bool(atoms.pbc.all())):
            r = atoms.calc.results
            forces_std = r.get("forces_std")
            rows.append(
                [
                    len(rows),
                    r["energy"],
                    r.get("energy_std", ""),
                    "" if forces_std is None else float(np.max(forces_std)),
                ]
            )
    finally:  # also when the driver breaks off or the user interrupts
        if log is not None:
            _write_log(Path(log), rows)
    return len(rows)


def _write_log(path: Path, rows: list[list]) -> None:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["step", "energy_eV", "energy_std_eV", "max_force_std_eV_per_A"])
    out.writerows(rows)
    atomic_write(path, buf.getvalue().encode())
