"""gap_fit-style descriptor strings: ``"cutoff=5.0 n_max=8 ... n_sparse=500"``.

Every key is checked: an unknown or misspelt key is an error with the nearest valid
name (gap_fit silently ignores such keys).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from gapfit.errors import GapfitError
from gapfit.sparsify import SPARSE_METHODS

SOAP_DEFAULTS: dict[str, Any] = {
    "cutoff": 5.0,
    "cutoff_transition_width": 1.0,
    "n_max": 8,
    "l_max": 6,
    "atom_sigma": 0.5,
    "zeta": 4,
    "delta": 1.0,
    "n_sparse": 500,
    "sparse_method": "cur_points",
    "covariance_type": "dot_product",
    "add_species": True,
    "weighting": "cosine",
    "poly_r0": None,
    "poly_c": 1.0,
    "poly_m": 2.0,
}
SOAP_HELP = {
    "cutoff": "Å, dscribe r_cut",
    "cutoff_transition_width": "Å, cosine weighting width",
    "n_max": "radial functions",
    "l_max": "max angular momentum",
    "atom_sigma": "Å, Gaussian width",
    "zeta": "kernel power (integer)",
    "delta": "eV, energy scale",
    "n_sparse": "sparse points per species",
    "sparse_method": "/".join(SPARSE_METHODS),
    "covariance_type": "dot_product",
    "add_species": "T (one GP per central species)",
    "weighting": "cosine (gap_fit-like), poly or none (dscribe)",
    "poly_r0": "Å, poly weighting r0 (default cutoff)",
    "poly_c": "poly weighting c",
    "poly_m": "poly weighting m",
}


def _convert(key: str, raw: Any) -> Any:
    default = SOAP_DEFAULTS[key]
    try:
        if key == "add_species":
            text = str(raw).strip().lower()
            if text not in ("t", "true", "1", "f", "false", "0"):
                raise ValueError
            return text in ("t", "true", "1")
        if key in ("n_max", "l_max", "n_sparse", "zeta"):
            value = float(raw)
            if value != int(value):
                raise ValueError
            return int(value)
        if key in ("sparse_method", "covariance_type", "weighting"):
            return str(raw).strip().lower()
        if default is None or isinstance(default, float):
            return float(raw)
    except (TypeError, ValueError) as err:
        raise GapfitError(
            f"SOAP setting {key}={raw!r} is not a valid "
            f"{type(default).__name__ if default is not None else 'number'} "
            f"({SOAP_HELP[key]})."
        ) from err
    return raw


def parse_soap(settings: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated SOAP + kernel + sparsification settings with defaults filled in.

    Args:
        settings: a gap_fit string ``"[soap] key=value ..."`` or a mapping.
    """
    given: dict[str, Any] = {}
    if isinstance(settings, str):
        tokens = settings.replace(",", " ").split()
        if tokens and tokens[0].lower() == "soap":
            tokens = tokens[1:]
        for tok in tokens:
            if "=" not in tok:
                raise GapfitError(
                    f"SOAP setting '{tok}' has no '='; "
                    "write key=value, e.g. cutoff=5.0."
                )
            key, value = tok.split("=", 1)
            given[key.strip().lower()] = value
    elif settings is not None:
        given = {str(k).lower(): v for k, v in settings.items()}
    out = dict(SOAP_DEFAULTS)
    for key, raw in given.items():
        if key not in SOAP_DEFAULTS:
            close = difflib.get_close_matches(key, list(SOAP_DEFAULTS), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise GapfitError(
                f"unknown SOAP setting '{key}'.{hint} Valid settings: "
                + ", ".join(SOAP_DEFAULTS)
                + "."
            )
        out[key] = _convert(key, raw)
    if out["covariance_type"] != "dot_product":
        raise GapfitError(
            f"covariance_type={out['covariance_type']} is not supported for SOAP; use "
            "dot_product."
        )
    if not out["add_species"]:
        raise GapfitError(
            "add_species=F is not supported: gapfit keeps one GP per "
            "central species (add_species=T)."
        )
    if out["poly_r0"] is None:
        out["poly_r0"] = out["cutoff"]
    return out
