"""gap_fit-style descriptor strings: ``"[soap] cutoff=5.0 n_max=8 ... n_sparse=500"``.

One parser serves every descriptor type (``parse_soap``, ``parse_distance_2b``, which
also reads gap_fit's ``distance_Nb order=2``, ``parse_angle_3b``): the
string (or a mapping) is split into ``key=value`` pairs, the leading descriptor word is
dropped, gap_fit's alternative key names are mapped onto ours (``energy_scale`` ->
``delta``, ``soap_exponent`` -> ``zeta``, ``lengthscale_uniform`` -> ``theta_uniform``),
and every key is checked: an unknown or misspelt key is an error with the nearest valid
name (gap_fit silently ignores such keys). Values are converted to the type of their
default, checked against the values gapfit implements and, where it matters, for sign.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gapfit.distance_2b import PAIR_SPARSE_METHODS
from gapfit.errors import GapfitError
from gapfit.soap import WEIGHTINGS
from gapfit.sparsify import SPARSE_METHODS

Settings = str | Mapping[str, Any]  # one term's settings: "key=value ..." or a mapping

# several 3-body terms would need one triplet list per cutoff
ONE_ANGLE_3B = (
    "gapfit fits one 3-body term (angle_3b or distance_Nb order=3; it covers every "
    "species triplet): give one."
)

F0_HELP = "0.0 (eV, the GP's prior mean; e0 carries the energy offset)"

SOAP_DEFAULTS: dict[str, Any] = {
    "cutoff": 5.0,
    "cutoff_transition_width": 1.0,
    "n_max": 8,
    "l_max": 6,
    "atom_sigma": 0.5,
    "zeta": 4,
    "delta": 1.0,
    "n_sparse": 500,
    "config_type_n_sparse": None,
    "sparse_method": "cur_points",
    "covariance_type": "dot_product",
    "add_species": True,
    "weighting": "cosine",
    "poly_r0": None,
    "poly_c": 1.0,
    "poly_m": 2.0,
    "Z": 0,
    "n_Z": 1,
    "n_species": 0,
    "species_Z": None,
    "central_weight": 1.0,
    "f0": 0.0,
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
    "config_type_n_sparse": "type:n:type:n, per species from each config_type "
    "(replaces n_sparse; types not named give none)",
    "sparse_method": "/".join(SPARSE_METHODS),
    "covariance_type": "dot_product",
    "add_species": "T: one GP per central species, with every species' density; "
    "F: Z and species_Z say which",
    "weighting": "cosine (gap_fit-like), poly or none (dscribe)",
    "poly_r0": "Å, poly weighting r0 (default cutoff)",
    "poly_c": "poly weighting c",
    "poly_m": "poly weighting m",
    "Z": "atomic number of the central atoms (add_species=F; 0: every species)",
    "n_Z": "number of central species of the term (1: one term per species)",
    "n_species": "number of species in species_Z (add_species=F)",
    "species_Z": "{Z1 Z2 ...}: the species of the density (add_species=F; every "
    "species of the data)",
    "central_weight": "1.0 (the central atom counts in its density in full)",
    "f0": F0_HELP,
}

DISTANCE_2B_DEFAULTS: dict[str, Any] = {
    "order": 0,
    "compact_clusters": True,
    "cutoff": 5.0,
    "cutoff_transition_width": None,
    "covariance_type": "ard_se",
    "delta": 1.0,
    "theta_uniform": None,
    "theta_fac": None,
    "n_sparse": 20,
    "sparse_method": "uniform",
    "add_species": True,
    "Z1": 0,
    "Z2": 0,
    "Z": None,
    "f0": 0.0,
}
DISTANCE_2B_HELP = {
    "order": "2 for gap_fit's distance_Nb order=2 (its 2-body form; 0: distance_2b)",
    "compact_clusters": "distance_Nb: T counts each pair in both orders (gap_fit's "
    "default), F once",
    "cutoff": "Å, pair cutoff",
    "cutoff_transition_width": "Å, cosine cutoff width (default 1.0; distance_Nb "
    "0.5, gap_fit's)",
    "covariance_type": "ard_se (squared exponential; gap_fit's 'gaussian')",
    "delta": "eV, energy scale",
    "theta_uniform": "Å, squared-exponential length scale (default 1.0)",
    "theta_fac": "length scale = factor x each species pair's range of distances",
    "n_sparse": "sparse distances per species pair",
    "sparse_method": "uniform (grid over the observed distance range) or random "
    "(distinct distances, the shortest and longest first)",
    "add_species": "T: one GP per species pair; F: the pair Z1-Z2 (distance_Nb: Z)",
    "Z1": "atomic number of one atom of the pair (add_species=F)",
    "Z2": "atomic number of the other atom of the pair (add_species=F)",
    "Z": "distance_Nb: {Z1 Z2}, the pair's atomic numbers (add_species=F)",
    "f0": F0_HELP,
}

ANGLE_3B_DEFAULTS: dict[str, Any] = {
    "order": 0,
    "compact_clusters": True,
    "cutoff": 3.0,
    "cutoff_transition_width": 0.5,
    "covariance_type": "ard_se",
    "delta": 1.0,
    "theta_uniform": None,
    "theta_fac": None,
    "n_sparse": 200,
    "sparse_method": "uniform",
    "add_species": True,
    "Z": None,
    "f0": 0.0,
}
ANGLE_3B_HELP = {
    "order": "3 for gap_fit's distance_Nb order=3 (its 3-body form, data of one "
    "species; 0: angle_3b)",
    "compact_clusters": "distance_Nb: T (both neighbours of the centre within the "
    "cutoff; F is not implemented)",
    "cutoff": "Å, both neighbours of the centre within it",
    "cutoff_transition_width": "Å, cosine cutoff width",
    "covariance_type": "ard_se (squared exponential; gap_fit's 'gaussian')",
    "delta": "eV, energy scale",
    "theta_uniform": "length scale of all three components (default 1.0)",
    "theta_fac": "length scales = factor x each component's range over each "
    "triplet type's triplets in the data",
    "n_sparse": "sparse triplets per triplet type",
    "sparse_method": "uniform (grid over the descriptor range) or random",
    "add_species": "T (one GP per centre species and neighbour pair); F for data "
    "of one species",
    "Z": "distance_Nb: {Z Z Z}, the element of its atoms (add_species=F)",
    "f0": F0_HELP,
}

ATOMIC_NUMBER_KEYS = ("Z", "Z1", "Z2")
_SEVERAL_CENTRES = (
    "one GP over several central species is not implemented (gapfit keeps central "
    "species apart); give one SOAP term per species with Z=<atomic number>, or "
    "add_species=T."
)
_TRUE = ("t", "true", "1")
_FALSE = ("f", "false", "0")
# gap_fit's alternative key names (its ``altkey``s), mapped onto ours where present
_KEY_ALIASES = {
    "energy_scale": "delta",
    "soap_exponent": "zeta",
    "lengthscale_uniform": "theta_uniform",
}


@dataclass(frozen=True)
class _Kind:
    """What one descriptor type accepts.

    ``defaults`` fixes the keys and, through each default's type, how a value is
    converted (bool, int, float; ``None`` means float; str is lower-cased).
    ``choices`` lists the only values gapfit implements, ``value_aliases`` gap_fit's
    other spellings of them, ``positive`` the keys that must be > 0.
    """

    name: str
    word: str
    defaults: Mapping[str, Any]
    help: Mapping[str, str]
    choices: Mapping[str, tuple[Any, ...]]
    value_aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    positive: tuple[str, ...] = ()
    other_words: tuple[str, ...] = ()  # gap_fit descriptor words read as this kind


_SOAP = _Kind(
    name="SOAP",
    word="soap",
    defaults=SOAP_DEFAULTS,
    help=SOAP_HELP,
    choices={
        "covariance_type": ("dot_product",),
        "central_weight": (1.0,),
        "f0": (0.0,),
        "sparse_method": SPARSE_METHODS,
        "weighting": WEIGHTINGS,
    },
    positive=("cutoff", "n_max", "atom_sigma", "zeta", "delta", "n_sparse"),
)
_DISTANCE_2B = _Kind(
    name="distance_2b",
    word="distance_2b",
    defaults=DISTANCE_2B_DEFAULTS,
    help=DISTANCE_2B_HELP,
    choices={
        "covariance_type": ("ard_se",),
        "sparse_method": PAIR_SPARSE_METHODS,
        "f0": (0.0,),
    },
    value_aliases={"covariance_type": {"gaussian": "ard_se"}},
    positive=(
        "cutoff",
        "cutoff_transition_width",
        "delta",
        "theta_uniform",
        "theta_fac",
        "n_sparse",
    ),
    other_words=("distance_nb",),
)
_ANGLE_3B = _Kind(
    name="angle_3b",
    word="angle_3b",
    defaults=ANGLE_3B_DEFAULTS,
    help=ANGLE_3B_HELP,
    choices={
        "covariance_type": ("ard_se",),
        "sparse_method": ("uniform", "random"),
        "f0": (0.0,),
    },
    value_aliases={"covariance_type": {"gaussian": "ard_se"}},
    positive=(
        "cutoff",
        "cutoff_transition_width",
        "delta",
        "theta_uniform",
        "theta_fac",
        "n_sparse",
    ),
    other_words=("distance_nb",),
)
DESCRIPTOR_WORDS = (_SOAP.word, _DISTANCE_2B.word, "distance_nb", _ANGLE_3B.word)


# gap_fit's defaults where gapfit's own differ, for keys a gap_fit line leaves out
# (gap_fit requires delta, zeta or theta, covariance_type and the SOAP basis itself)
GAP_FIT_DEFAULTS: dict[str, dict[str, str]] = {
    "soap": {"cutoff_transition_width": "0.5", "sparse_method": "random"},
    "distance_2b": {"cutoff_transition_width": "0.5", "sparse_method": "random"},
    "angle_3b": {"sparse_method": "random"},
}


def with_gap_fit_defaults(text: str, word: str) -> tuple[str, list[str]]:
    """One descriptor's settings ``text`` of a gap_fit line (``word``: a key of
    ``GAP_FIT_DEFAULTS``; the text may start with ``distance_Nb``) with gap_fit's
    defaults appended for the keys it leaves out, and those ``key=value`` settings."""
    kind = {"soap": _SOAP, "distance_2b": _DISTANCE_2B, "angle_3b": _ANGLE_3B}[word]
    spelt = {k.lower(): k for k in kind.defaults}
    given = {spelt.get(k, _KEY_ALIASES.get(k, k)) for k in _tokens(text, kind)}
    added = [f"{k}={v}" for k, v in GAP_FIT_DEFAULTS[word].items() if k not in given]
    return " ".join([text, *added]).strip(), added


def parse_gap_bool(text: Any, what: str) -> bool:
    """gap_fit's logical values ``T``/``F`` (also true/false/1/0, any case).

    Args:
        text: the value as given (a string or a bool).
        what: where it was given, for the error message (e.g. ``"sigma_per_atom"``).
    """
    value = str(text).strip().lower()
    if value not in _TRUE + _FALSE:
        raise GapfitError(f"{what}={text!r} is not a logical value; write T or F.")
    return value in _TRUE


def parse_soap(settings: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated SOAP + kernel + sparsification settings with defaults filled in.

    Args:
        settings: a gap_fit string ``"[soap] key=value ..."`` or a mapping.
    """
    out = _parse(settings, _SOAP)
    if out["poly_r0"] is None:
        out["poly_r0"] = out["cutoff"]
    return _soap_species(out)


def parse_distance_2b(settings: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated 2-body settings (gap_fit's ``distance_2b``, or its ``distance_Nb
    order=2``) with defaults filled in.

    Keys (defaults in ``DISTANCE_2B_DEFAULTS``): ``cutoff`` and
    ``cutoff_transition_width`` (Å, cosine cutoff; width in (0, cutoff]),
    ``covariance_type`` (``ard_se`` only), ``delta`` (eV), one of ``theta_uniform``
    (Å, the squared-exponential length scale) or ``theta_fac`` (each species pair's
    length this factor times its range of distances in the training data),
    ``n_sparse`` (per species pair), ``sparse_method`` (``uniform``: a grid over the
    observed distance range; ``random``: distinct distances), ``add_species``
    (``T``: one GP per species pair) and, with ``add_species=F``, ``Z1`` and ``Z2``
    (the pair's atomic numbers; 0 for data of one species). ``order=2`` (a string
    that starts with ``distance_Nb`` must give it) reads the settings as gap_fit's
    ``distance_Nb``: the kernel of a pair of one species summed over its two orders,
    ``compact_clusters`` (T: each pair counted in both orders, F: once), ``Z={Z1
    Z2}`` in place of ``Z1``/``Z2``, and ``cutoff_transition_width`` 0.5 Å by
    default (gap_fit's; 1.0 for ``distance_2b``).

    Args:
        settings: a gap_fit string ``"[distance_2b|distance_Nb] key=value ..."`` or a
            mapping.
    """
    out = _one_length_scale(_parse(settings, _DISTANCE_2B), _DISTANCE_2B)
    nb = out["order"] != 0
    if out["cutoff_transition_width"] is None:
        out["cutoff_transition_width"] = 0.5 if nb else 1.0
    out = _width_inside_cutoff(out, _DISTANCE_2B)
    if not nb:
        if out["Z"] is not None or not out["compact_clusters"]:
            raise GapfitError(
                "distance_2b: Z and compact_clusters are settings of gap_fit's "
                "distance_Nb; give the pair as Z1= Z2=, or write distance_Nb order=2."
            )
        pair, written = (out["Z1"], out["Z2"]), f"Z1={out['Z1']} Z2={out['Z2']}"
    else:
        if out["order"] != 2:
            if out["order"] == 3:
                raise GapfitError(
                    "distance_Nb order=3 is a 3-body term: give it as one "
                    '(--angle-3b "distance_Nb order=3 ...", angle_3b=...).'
                )
            raise GapfitError(
                f"distance_Nb order={out['order']} is not implemented; gapfit reads "
                "its 2-body (order=2) and 3-body (order=3) forms."
            )
        if out["Z1"] or out["Z2"]:
            raise GapfitError(
                f"distance_Nb Z1={out['Z1']} Z2={out['Z2']}: distance_Nb names its "
                "pair as Z={Z1 Z2}; write that (or distance_2b for Z1/Z2)."
            )
        pair = tuple(out["Z"] or (0, 0))
        written = "Z={" + " ".join(map(str, pair)) + "}"
        out["Z"] = list(pair)
    if out["add_species"] and any(pair):
        raise GapfitError(
            f"{_word(out)} {written} with add_species=T: add_species=T makes one GP "
            "for every species pair itself (as gap_fit); set add_species=F to fit "
            "that pair alone."
        )
    return out


def _word(pair: Mapping[str, Any]) -> str:
    """gap_fit's descriptor word of parsed 2-body settings."""
    return "distance_Nb" if pair["order"] else "distance_2b"


def parse_angle_3b(settings: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated 3-body settings (gap_fit's ``angle_3b``) with defaults filled in.

    Keys (defaults in ``ANGLE_3B_DEFAULTS``): ``cutoff`` and
    ``cutoff_transition_width`` (Å), ``covariance_type`` (``ard_se`` only),
    ``delta`` (eV), one of ``theta_uniform`` (the length scale of all three
    descriptor components) or ``theta_fac`` (each one this factor times the
    component's range in the training data), ``n_sparse`` (per triplet type) and
    ``sparse_method`` (``uniform`` or ``random``).

    Args:
        settings: a gap_fit string ``"[angle_3b] key=value ..."`` or a mapping.
    """
    out = _width_inside_cutoff(_parse(settings, _ANGLE_3B), _ANGLE_3B)
    if out["order"] or out["Z"] is not None or not out["compact_clusters"]:
        _distance_nb_3(out)
    return _one_length_scale(out, _ANGLE_3B)


def _one_length_scale(out: dict[str, Any], kind: _Kind) -> dict[str, Any]:
    """Parsed settings ``out`` with at most one of ``theta_uniform`` and
    ``theta_fac`` given (an error otherwise), ``theta_uniform`` 1.0 when neither."""
    if out["theta_uniform"] is not None and out["theta_fac"] is not None:
        raise GapfitError(
            f"{kind.name}: theta_uniform and theta_fac both set the length scales "
            "(gap_fit allows one); give one."
        )
    if out["theta_uniform"] is None and out["theta_fac"] is None:
        out["theta_uniform"] = 1.0
    return out


def _distance_nb_3(out: dict[str, Any]) -> None:
    """Check the distance_Nb keys of parsed 3-body settings ``out`` (order=3,
    compact clusters, ``Z`` of one element or any) and fill in ``Z``."""
    if out["order"] != 3:
        if out["order"] == 2:
            why = "it is a 2-body term: give it as one (--distance-2b, distance_2b=)"
        elif not out["order"]:
            why = "Z and compact_clusters are distance_Nb settings: add order=3"
        else:
            why = "gapfit reads its 2-body (order=2) and 3-body (order=3) forms"
        raise GapfitError(f"distance_Nb order={out['order']} as a 3-body term: {why}.")
    if not out["compact_clusters"]:
        raise GapfitError(
            "distance_Nb order=3 compact_clusters=F (clusters of mutual neighbours) is "
            "not implemented; use compact_clusters=T (both neighbours of a centre)."
        )
    Z = out["Z"] or [0, 0, 0]
    if len(Z) != 3 or len(set(Z)) > 1:
        raise GapfitError(
            f"distance_Nb order=3 Z={{{' '.join(map(str, Z))}}}: gapfit reads three "
            "atoms of one element (e.g. Z={14 14 14}) or of any (0)."
        )
    if out["add_species"] and any(Z):
        raise GapfitError(
            f"distance_Nb Z={{{' '.join(map(str, Z))}}} with add_species=T: "
            "add_species=T makes the term for the data's element itself; set "
            "add_species=F to give Z."
        )
    out["Z"] = list(Z)


# ------------------------------------------------------------------------------------
def _width_inside_cutoff(out: dict[str, Any], kind: _Kind) -> dict[str, Any]:
    """``out``, checked: its cosine transition fits inside its cutoff."""
    if out["cutoff_transition_width"] > out["cutoff"]:
        raise GapfitError(
            f"{kind.name} cutoff_transition_width={out['cutoff_transition_width']} Å "
            f"is larger than cutoff={out['cutoff']} Å; it must lie in (0, cutoff]."
        )
    return out


def _soap_species(out: dict[str, Any]) -> dict[str, Any]:
    """``out``, its species keys checked as gap_fit's ``add_species`` reads them:
    with ``T`` gap_fit itself writes ``Z``, ``n_species`` and ``species_Z`` into one
    term per central species, so none may be given; with ``F`` they are the user's,
    ``n_species`` counting ``species_Z``."""
    given = [k for k in ("Z", "n_species", "species_Z") if out[k]]
    if out["add_species"] and given:
        raise GapfitError(
            f"SOAP {', '.join(given)} with add_species=T: add_species=T makes one GP "
            "per central species with every species' density itself (as gap_fit); "
            "set add_species=F to give Z, n_species and species_Z yourself."
        )
    if out["n_Z"] != 1:
        raise GapfitError(f"SOAP n_Z={out['n_Z']}: {_SEVERAL_CENTRES}")
    species = out["species_Z"]
    if species is not None and not out["n_species"]:
        raise GapfitError(
            "SOAP species_Z is given without n_species; gap_fit needs both: add "
            f"n_species={len(species)}."
        )
    if species is not None and out["n_species"] != len(species):
        raise GapfitError(
            f"SOAP n_species={out['n_species']} but species_Z lists {len(species)} "
            f"species {list(species)}; make them agree."
        )
    if species is None and out["n_species"] > 1:
        raise GapfitError(
            f"SOAP n_species={out['n_species']} without species_Z; list them, e.g. "
            "species_Z={29 79}."
        )
    return out


def _parse(settings: str | Mapping[str, Any] | None, kind: _Kind) -> dict[str, Any]:
    """Tokenise, check keys, convert and check values of one descriptor's settings."""
    if isinstance(settings, str):
        given = _tokens(settings, kind)
    elif settings is None:
        given = {}
    elif isinstance(settings, Mapping):
        given = {str(k).strip().lower(): v for k, v in settings.items()}
    else:
        raise GapfitError(
            f"{kind.name} settings must be a string 'key=value ...' or a mapping, "
            f"found {type(settings).__name__}."
        )
    out = dict(kind.defaults)
    seen: dict[str, str] = {}
    spelt = {k.lower(): k for k in kind.defaults}  # gap_fit's keys, any case
    for key, raw in given.items():
        name = spelt.get(key, _KEY_ALIASES.get(key, key))
        if name not in kind.defaults:
            valid = list(kind.defaults)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise GapfitError(
                f"unknown {kind.name} setting '{key}'.{hint} Valid settings: "
                + ", ".join(valid)
                + "."
            )
        if name in seen:
            raise GapfitError(
                f"{kind.name} setting '{name}' is given twice ({seen[name]} and "
                f"{key}); give it once."
            )
        seen[name] = key
        out[name] = _convert(kind, name, raw)
    return out


def _tokens(text: str, kind: _Kind) -> dict[str, str]:
    """``"[{][word] key=value key=value[}]"`` -> {key: value} (keys lower-cased)."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    # split at spaces and commas outside braces: species_Z={29 79} is one token
    spaced = "".join(" " if c.isspace() else c for c in body)
    tokens = [t.strip() for t in split_top_level(spaced, " ,") if t.strip()]
    word = None  # the descriptor word, if the text starts with one
    if tokens and "=" not in tokens[0]:
        word = tokens[0].lower()
        if word in (kind.word, *kind.other_words):
            tokens = tokens[1:]
        elif word in DESCRIPTOR_WORDS:
            raise GapfitError(
                f"'{text}' describes a {word} descriptor, not {kind.name}; "
                f"give it as the {word} settings (--{word.replace('_', '-')} on the "
                "command line)."
            )
    given: dict[str, str] = {}
    logical = {k.lower() for k, v in kind.defaults.items() if isinstance(v, bool)}
    for tok in tokens:
        if "=" not in tok and tok.lower() in logical:
            tok += "=T"  # gap_fit reads a bare logical key as true
        if "=" not in tok:
            raise GapfitError(
                f"{kind.name} setting '{tok}' has no '='; "
                "write key=value, e.g. cutoff=5.0."
            )
        key, value = tok.split("=", 1)
        key = key.strip().lower()
        if key in given:
            raise GapfitError(
                f"{kind.name} setting '{key}' is given twice; give it once."
            )
        given[key] = value
    if word in kind.other_words and "order" not in given:
        raise GapfitError(
            f"'{text}': gap_fit's distance_Nb needs order= (gapfit reads order=2, "
            "the 2-body form)."
        )
    if word == kind.word and "order" in kind.defaults and "order" in given:
        raise GapfitError(
            f"'{text}': order is a setting of gap_fit's distance_Nb; write "
            f"distance_Nb order={given['order']} ... or leave order out."
        )
    return given


def parse_type_counts(raw: Any, what: str = "config_type_n_sparse") -> dict[str, int]:
    """gap_fit's ``{type1:50:type2:100}`` (braces optional; or a mapping) as
    ``{config_type: count}``, counts integers >= 1.

    Raises:
        GapfitError: an odd number of fields, an empty type, a type given twice or a
            count that is not a positive integer.
    """
    if isinstance(raw, Mapping):
        fields = [str(x) for kv in raw.items() for x in kv]
    else:
        text = str(raw).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        fields = [x.strip() for x in text.split(":")]
    if len(fields) % 2 or not fields or not all(fields[::2]):
        raise GapfitError(
            f"{what}={raw!r}: write config_type:count pairs, e.g. "
            "{bulk:200:surface:100}."
        )
    out: dict[str, int] = {}
    for name, count in zip(fields[::2], fields[1::2], strict=True):
        if name in out:
            raise GapfitError(f"{what}: config_type '{name}' is given twice.")
        try:
            n = float(count)
        except ValueError:
            n = 0.0
        if not (n >= 1 and n == int(n)):
            raise GapfitError(
                f"{what}: '{name}:{count}', the count must be a whole number >= 1."
            )
        out[name] = int(n)
    return out


def split_top_level(text: str, separators: str) -> list[str]:
    """``text`` split at ``separators`` that are not inside braces."""
    parts, depth, start = [], 0, 0
    for k, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0 and char in separators:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return parts


def _numbers(raw: Any) -> list[float]:
    """gap_fit's ``{29 79}`` (braces and commas optional; a number or a sequence)
    as numbers, ``[]`` where a field is not one."""
    if isinstance(raw, str):
        fields = raw.strip().removeprefix("{").removesuffix("}").replace(",", " ")
        values: Any = fields.split()
    elif isinstance(raw, int | float):
        values = [raw]
    else:
        values = list(raw)
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return []


def _atomic_numbers(raw: Any, kind: _Kind) -> list[int]:
    """gap_fit's ``{29 79}`` (braces optional; or a sequence) as sorted distinct
    atomic numbers."""
    numbers = _numbers(raw)
    if not numbers or not all(1 <= z <= 118 and z == int(z) for z in numbers):
        raise GapfitError(
            f"{kind.name} setting species_Z={raw!r} is not a list of atomic numbers; "
            "write e.g. species_Z={29 79}."
        )
    return sorted({int(z) for z in numbers})


def _cluster_numbers(raw: Any, order: int) -> list[int]:
    """distance_Nb's ``Z={29 79}`` (braces optional; or a sequence) as ``order``
    sorted atomic numbers (0: any species)."""
    numbers = _numbers(raw)
    if len(numbers) != order or not all(0 <= z <= 118 and z == int(z) for z in numbers):
        raise GapfitError(
            f"distance_Nb setting Z={raw!r} is not {order} atomic numbers (order="
            f"{order}); write e.g. Z={{{' '.join(['29'] * order)}}}."
        )
    return sorted(int(z) for z in numbers)


def _convert(kind: _Kind, key: str, raw: Any) -> Any:
    """``raw`` converted to the type of the key's default and checked."""
    default = kind.defaults[key]
    if raw is None and default is None:  # unset, as by default (a parsed mapping)
        return None
    if key == "config_type_n_sparse":
        return parse_type_counts(raw)
    if key == "species_Z":
        return _atomic_numbers(raw, kind)
    if key == "Z" and kind is _DISTANCE_2B:
        return _cluster_numbers(raw, 2)
    if key == "Z" and kind is _ANGLE_3B:
        return _cluster_numbers(raw, 3)
    if isinstance(raw, str):  # gap_fit writes one value in braces too: Z={29}
        raw = raw.strip().removeprefix("{").removesuffix("}")
        if key == "Z" and len(raw.replace(",", " ").split()) > 1:
            raise GapfitError(f"SOAP Z={{{raw}}}: {_SEVERAL_CENTRES}")
    if isinstance(default, bool):
        what = "logical (T/F)"
    else:
        what = "integer" if isinstance(default, int) else "number"
    try:
        if isinstance(default, bool):
            value: Any = parse_gap_bool(raw, key)
        elif isinstance(default, int):
            if isinstance(raw, bool):
                raise ValueError
            number = float(raw)
            if number != int(number):
                raise ValueError
            value = int(number)
        elif isinstance(default, str):
            value = str(raw).strip().lower()
            value = kind.value_aliases.get(key, {}).get(value, value)
        else:  # float, or None standing for a float
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
    except (TypeError, ValueError, OverflowError, GapfitError) as err:
        raise GapfitError(
            f"{kind.name} setting {key}={raw!r} is not a valid {what} "
            f"({kind.help[key]})."
        ) from err
    allowed = kind.choices.get(key)
    if allowed is not None and value not in allowed:
        names = ["T" if a is True else str(a) for a in allowed]
        use = f"{key}={names[0]}" if len(names) == 1 else "one of " + ", ".join(names)
        why = kind.help[key].removeprefix(names[0]).strip(" ()")
        if len(names) == 1 and why:
            use += f" ({why})"
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close and len(names) > 1 else ""
        raise GapfitError(
            f"{kind.name} setting {key}={raw} is not supported by gapfit; "
            f"use {use}.{hint}"
        )
    if key in ATOMIC_NUMBER_KEYS and not 0 <= value <= 118:
        raise GapfitError(
            f"{kind.name} setting {key}={raw} is not an atomic number (1-118, or 0 "
            "for any)."
        )
    if key in kind.positive and not value > 0:
        raise GapfitError(
            f"{kind.name} setting {key}={raw} must be > 0 ({kind.help[key]})."
        )
    return value
