"""A fitted GAP: arrays plus a JSON description, saved as one ``.npz`` (no pickle).

File members: ``meta`` (JSON text: format, version, package versions, descriptor and
kernel settings, sigmas, e0, species, units, training-data hash and summary),
``sparse_X (M, F)`` unit SOAP vectors, ``sparse_species (M,)`` species indices,
``weights (M,)``, ``L_mm (M, M)``, ``R (M, M)``. Loading validates keys, shapes,
dtypes, finiteness and the format version.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gapfit.blocks import batch_arrays, predict_mean
from gapfit.errors import GapfitError
from gapfit.kernels import DotProductKernel
from gapfit.neighbours import Structure, incoming, make_batch
from gapfit.soap import SoapSpec
from gapfit.sparse_gp import Posterior, VarianceFactors, variance_factors
from gapfit.variance import predict_std

FORMAT = "gapfit-model"
FORMAT_VERSION = 1
ARRAYS = ("sparse_X", "sparse_species", "weights", "L_mm", "R")


@dataclass
class Model:
    """A fitted sparse GP on SOAP; ``predict`` gives E, F, virial/stress and stds."""

    spec: SoapSpec
    kernel: DotProductKernel
    sparse_X: np.ndarray  # (M, F) unit SOAP vectors
    sparse_species: np.ndarray  # (M,) species index into spec.species
    posterior: Posterior
    e0: dict[int, float]  # eV per species
    info: dict = field(default_factory=dict)  # sigmas, settings, data summary

    @cached_property
    def factors(self) -> VarianceFactors:
        return variance_factors(self.posterior)

    @property
    def species(self) -> tuple[int, ...]:
        return self.spec.species

    def predict(
        self,
        structures: Sequence[Structure],
        std: bool = False,
        wheres: Sequence[str] | None = None,
        batch_atoms: int = 2048,
    ) -> list[dict]:
        """Predict every structure.

        Returns one dict per structure with ``energy`` (eV), ``energies`` (n,) eV local
        energies incl. e0, ``forces`` (n, 3) eV/Å, ``virial`` (3, 3) eV (= -stress V),
        and, for 3D-periodic cells, ``stress`` (6,) eV/Å^3 Voigt (xx yy zz yz xz xy).
        With ``std``: ``energy_std``, ``energies_std``, ``forces_std``, ``virial_std``,
        ``stress_std``: posterior standard deviations (DTC; latent function, no noise).
        """
        wheres = (
            list(wheres) if wheres else [f"config {k}" for k in range(len(structures))]
        )
        out: list[dict] = []
        # std needs per-config Gram matrices, so one configuration per batch there
        groups = chunk_indices(
            [len(s.numbers) for s in structures], 1 if std else batch_atoms
        )
        for g in groups:
            sel = [structures[k] for k in g]
            batch = make_batch(
                sel, self.species, self.spec.neighbour_cutoff, [wheres[k] for k in g]
            )
            b = batch_arrays(batch)
            mean = predict_mean(
                self.spec,
                self.kernel,
                jnp.asarray(self.sparse_X),
                jnp.asarray(self.sparse_species),
                jnp.asarray(self.posterior.weights),
                b,
            )
            sd = (
                predict_std(
                    self.spec,
                    self.kernel,
                    jnp.asarray(self.sparse_X),
                    jnp.asarray(self.sparse_species),
                    self.factors,
                    b,
                    jnp.asarray(incoming(batch)),
                )
                if std
                else None
            )
            out.extend(self._unpack(sel, batch, mean, sd))
        return out

    def _unpack(self, sel, batch, mean, sd) -> list[dict]:
        e0 = np.array([self.e0[z] for z in self.species])
        res, a0 = [], 0
        for c, s in enumerate(sel):
            n = len(s.numbers)
            at = slice(a0, a0 + n)
            local = np.asarray(mean.local_energy[at]) + e0[batch.species[at]]
            W = _full(np.asarray(mean.virial[c]))
            r = {
                "energy": float(local.sum()),
                "energies": local,
                "free_energy": None,
                "forces": np.asarray(mean.forces[at]),
                "virial": W,
            }
            r["free_energy"] = r["energy"]
            volume = _volume(s)
            if volume:
                r["stress"] = -np.asarray(mean.virial[c]) / volume
            if sd is not None:
                r["energy_std"] = float(sd.energy[c])
                r["energies_std"] = np.asarray(sd.local_energy[at])
                r["forces_std"] = np.asarray(sd.forces[at])
                r["virial_std"] = _full(np.asarray(sd.virial[c]))
                if volume:
                    r["stress_std"] = np.asarray(sd.virial[c]) / volume
            res.append(r)
            a0 += n
        return res

    # ---- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (temp file in the target directory + rename)."""
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "soap": self.spec.to_dict(),
            "kernel": {
                "type": "dot_product",
                "delta": self.kernel.delta,
                "zeta": self.kernel.zeta,
            },
            "e0": {str(z): v for z, v in self.e0.items()},
            "units": {
                "energy": "eV",
                "length": "Å",
                "forces": "eV/Å",
                "virial": "eV",
                "stress": "eV/Å^3",
            },
            **self.info,
        }
        arrays = {
            "sparse_X": self.sparse_X,
            "sparse_species": self.sparse_species,
            "weights": np.asarray(self.posterior.weights),
            "L_mm": np.asarray(self.posterior.L_mm),
            "R": np.asarray(self.posterior.R),
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta, indent=1)), **arrays)
        atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read and validate a model written by ``save`` (no pickle)."""
        path = Path(path)
        if not path.is_file():
            raise GapfitError(
                f"model file {path} does not exist; fit one with `gapfit fit`."
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                members = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise GapfitError(
                f"{path} is not a readable gapfit model (not a complete .npz "
                "archive of plain arrays); it may be truncated or another program's "
                "file: refit or "
                "copy it again."
            ) from err
        if "meta" not in members:
            raise GapfitError(f"{path} has no 'meta' member: not a gapfit model.")
        try:
            meta = json.loads(str(members["meta"]))
        except json.JSONDecodeError as err:
            raise GapfitError(
                f"{path}: corrupt metadata ({err}); refit the model."
            ) from err
        if meta.get("format") != FORMAT:
            raise GapfitError(
                f"{path} is not a gapfit model (format={meta.get('format')!r})."
            )
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise GapfitError(
                f"{path} has model format version {version}, newer than this gapfit "
                f"reads ({FORMAT_VERSION}); upgrade gapfit (pip install -U gapfit)."
            )
        missing = [k for k in ARRAYS if k not in members]
        if missing:
            raise GapfitError(
                f"{path} lacks arrays {missing}; the file is corrupt, refit."
            )
        try:
            spec = SoapSpec(**meta["soap"])
            kernel = DotProductKernel(meta["kernel"]["delta"], meta["kernel"]["zeta"])
            e0 = {int(z): float(v) for z, v in meta["e0"].items()}
        except (KeyError, TypeError) as err:
            raise GapfitError(
                f"{path}: metadata lacks {err}; the file is corrupt, refit."
            ) from err
        X, s, w, L, R = (members[k] for k in ARRAYS)
        M = w.shape[0] if w.ndim == 1 else -1
        shapes = {
            "sparse_X": (X.shape, (M, spec.n_features)),
            "sparse_species": (s.shape, (M,)),
            "L_mm": (L.shape, (M, M)),
            "R": (R.shape, (M, M)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise GapfitError(
                    f"{path}: {name} has shape {got}, expected {want}; refit."
                )
        for name, arr in zip(ARRAYS, (X, s, w, L, R), strict=True):
            kind = "i" if name == "sparse_species" else "f"
            if arr.dtype.kind != kind or (kind == "f" and not np.isfinite(arr).all()):
                raise GapfitError(
                    f"{path}: {name} is not finite {kind}-typed data; refit."
                )
        if set(e0) != set(spec.species):
            raise GapfitError(
                f"{path}: e0 species {sorted(e0)} differ from {spec.species}."
            )
        info = {
            k: v
            for k, v in meta.items()
            if k not in ("format", "format_version", "soap", "kernel", "e0", "units")
        }
        return cls(
            spec,
            kernel,
            X,
            s,
            Posterior(jnp.asarray(w), jnp.asarray(L), jnp.asarray(R)),
            e0,
            info,
        )


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def chunk_indices(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices grouped so each group holds <= budget atoms (or one item)."""
    groups: list[list[int]] = [[]]
    total = 0
    for k, n in enumerate(sizes):
        if groups[-1] and total + n > budget:
            groups.append([])
            total = 0
        groups[-1].append(k)
        total += n
    return [g for g in groups if g]


def _volume(s: Structure) -> float | None:
    pbc = np.asarray(s.pbc, dtype=bool)
    return (
        float(abs(np.linalg.det(np.asarray(s.cell, dtype=float))))
        if pbc.all()
        else None
    )


def _full(v: np.ndarray) -> np.ndarray:
    """3x3 tensor from Voigt ``(6,)`` (xx yy zz yz xz xy)."""
    return np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])
