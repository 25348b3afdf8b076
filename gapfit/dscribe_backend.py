"""dscribe as a selectable backend of SOAP values (no gradients).

``dscribe.descriptors.SOAP.create`` (C++, Himanen et al., CPC 247, 106949 (2020)) gives
the same vectors as ``gapfit.soap`` for the ``none`` and ``poly`` weightings (tested to
~1e-12 relative). Its position derivatives are numerical for periodic cells, so gapfit
uses it only where values suffice: the descriptor pass of a fit (the SOAP matrix from
which sparse points are chosen), with ``GAP(descriptor_backend="dscribe")``. Kernel rows
of forces and virials always come from the JAX SOAP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gapfit.data import Frame
from gapfit.errors import GapfitError
from gapfit.soap import SoapSpec

BACKENDS = ("jax", "dscribe")


def check_backend(backend: str, weighting: str | None) -> None:
    """Reject an unknown backend, or dscribe with a weighting it does not have."""
    if backend not in BACKENDS:
        raise GapfitError(
            f"descriptor_backend={backend!r} is not one of {', '.join(BACKENDS)}."
        )
    if backend == "dscribe" and weighting == "cosine":
        raise GapfitError(
            "descriptor_backend='dscribe' needs SOAP weighting=poly or none (dscribe "
            "has no cosine transition); add e.g. 'weighting=poly' to the SOAP "
            "settings or use descriptor_backend='jax'."
        )


def soap_values(spec: SoapSpec, frames: Sequence[Frame], n_jobs: int = 1) -> np.ndarray:
    """SOAP ``(sum n_atoms, n_features)`` of every atom of ``frames``, by dscribe.

    Periodic positions are wrapped into the cell first (dscribe expects that; the
    descriptor does not change).
    """
    from dscribe.descriptors import SOAP

    check_backend("dscribe", spec.weighting)
    kwargs = spec.dscribe_kwargs()
    out = []
    for periodic in (False, True):
        sel = [k for k, f in enumerate(frames) if bool(np.any(f.pbc)) == periodic]
        if not sel:
            continue
        atoms = []
        for k in sel:
            a = frames[k].to_atoms()
            if periodic:
                a.wrap()
            atoms.append(a)
        values = SOAP(**kwargs, periodic=periodic).create(atoms, n_jobs=n_jobs)
        parts = [values] if len(atoms) == 1 else list(values)
        out.extend(zip(sel, parts, strict=True))
    out.sort(key=lambda kv: kv[0])
    return np.concatenate([np.asarray(v).reshape(-1, spec.n_features) for _, v in out])
