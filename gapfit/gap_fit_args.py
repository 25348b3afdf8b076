"""gap_fit's command line as ``GAP`` keyword arguments.

``parse_gap_fit_command`` takes the arguments of a gap_fit call as the shell hands
them over, e.g. ``at_file=train.xyz gap={distance_2b cutoff=5.0 ... : soap
cutoff=5.0 ...} default_sigma={0.001 0.05 0.05 0.0} gp_file=gap.xml``. The shell
splits ``gap={...}`` at every space, so tokens are re-joined until their braces
balance (gap_fit itself joins all of its arguments the same way). Each ``key=value``
is then checked like the rest of gapfit's input: keys gapfit does not implement are
errors (gap_fit would silently ignore a misspelt one), harmless output options of
gap_fit are accepted and reported as ignored, and every value is validated before any
data are read.

``gap_kwargs`` is the one place where both styles of ``gapfit fit`` (gap_fit's
``key=value`` arguments and the dashed options) turn text into ``GAP`` arguments, so
the two give identical estimators.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from gapfit.data import _E0_METHODS, LabelKeys, parse_config_type_sigma, parse_e0
from gapfit.errors import GapfitError
from gapfit.gapstring import (
    ANGLE_3B_DEFAULTS,
    DISTANCE_2B_DEFAULTS,
    GAP_FIT_DEFAULTS,
    ONE_ANGLE_3B,
    SOAP_DEFAULTS,
    Settings,
    parse_angle_3b,
    parse_distance_2b,
    parse_gap_bool,
    parse_soap,
    split_top_level,
    with_gap_fit_defaults,
)

E0_METHODS = _E0_METHODS  # what gapfit.data.fit_e0 implements
DEFAULT_SIGMA = "0.001 0.05 0.05 0.0"
DEFAULT_GP_FILE = "gap_new.xml"  # gap_fit's default gp_file

# gap_fit key -> (``gapfit fit`` option, ``GAP`` argument); gap_fit's other spellings
# of a key (its "altkey"s) are in ALIASES. Drives ``gapfit fit --help`` and the check
# that the two styles are not mixed.
OPTION_MAP: dict[str, tuple[str, str]] = {
    "at_file": ("--at-file", "fit(path)"),
    "gp_file": ("--gp-file", "save(path)"),
    "gap={soap ...}": ("--soap", "soap="),
    "gap={distance_2b ...}": ("--distance-2b", "distance_2b="),
    "gap={distance_Nb order=2 ...}": ("--distance-2b", "distance_2b="),
    "gap={angle_3b ...}": ("--angle-3b", "angle_3b="),
    "gap={distance_Nb order=3 ...}": ("--angle-3b", "angle_3b="),
    "default_sigma": ("--default-sigma", "default_sigma="),
    "config_type_sigma": ("--config-type-sigma", "config_type_sigma="),
    "sigma_per_atom": ("--sigma-per-atom/--no-sigma-per-atom", "sigma_per_atom="),
    "e0": ("--e0", "e0="),
    "e0_method": ("--e0-method", "e0_method="),
    "sparse_jitter": ("--sparse-jitter", "sparse_jitter="),
    "rnd_seed": ("--rnd-seed", "rnd_seed="),
    "energy_parameter_name": ("--energy-parameter-name", "keys.energy"),
    "force_parameter_name": ("--force-parameter-name", "keys.forces"),
    "virial_parameter_name": ("--virial-parameter-name", "keys.virial"),
    "stress_parameter_name": ("--stress-parameter-name", "keys.stress"),
    "config_type_parameter_name": ("--config-type-parameter-name", "keys.config_type"),
    "force_mask_parameter_name": ("--force-mask-parameter-name", "keys.force_mask"),
}
ALIASES = {
    "atoms_filename": "at_file",
    "gap_file": "gp_file",
    "default_kernel_regularisation": "default_sigma",
    "config_type_kernel_regularisation": "config_type_sigma",
    "kernel_regularisation_is_per_atom": "sigma_per_atom",
    "do_copy_atoms_file": "do_copy_at_file",
    "baseline_ip_args": "core_ip_args",
    "baseline_param_filename": "core_param_file",
}
# gap_fit output options that do not change the model: accepted, reported, ignored
IGNORED = {
    "do_copy_at_file": "gapfit stores a sha256 and counts of the training data in "
    "the model file, never a copy",
    "sparse_separate_file": "gapfit keeps the sparse points inside its one .npz "
    "model file",
    "verbosity": "gapfit prints a summary and progress bars (--quiet hides them)",
    "openmp_chunk_size": "gapfit streams its own chunks (--chunk-atoms) and uses "
    "every core",
    "do_ip_timing": "gapfit's summary reports the fit's timings per stage",
}
# The rest of gap_fit's options (QUIP gap_fit_module.F95, parse_command_line): real
# options, so an error about one never suggests a similar-looking supported key.
UNSUPPORTED = (
    "local_property0",
    "default_kernel_regularisation_local_property",
    "default_local_property_sigma",
    "hessian_displacement",
    "hessian_delta",
    "local_property_parameter_name",
    "hessian_parameter_name",
    "kernel_regularisation_parameter_name",
    "sigma_parameter_name",
    "parameter_name_prefix",
    "sparse_use_actual_gpcov",
    "template_file",
    "sparsify_only_no_fit",
    "condition_number_norm",
    "linear_system_dump_file",
    "mpi_blocksize",
    "mpi_blocksize_rows",
    "mpi_blocksize_cols",
    "mpi_print_all",
    "export_covariance",
)
# gap_fit descriptors gapfit does not implement (same reason as UNSUPPORTED)
UNSUPPORTED_DESCRIPTORS = (
    "distance_3b",
    "co_distance_2b",
    "co_angle_3b",
    "as_distance_2b",
    "coordination",
    "soap_turbo",
    "soap_express",
    "bispectrum_so4",
    "bispectrum_so3",
    "power_so3",
    "power_so4",
    "fourier_so4",
    "behler",
    "rdf",
    "alex",
    "cosnx",
    "trihis",
    "general_monomer",
    "general_dimer",
    "general_trimer",
    "molecule_lo_d",
    "water_monomer",
    "water_dimer",
    "a2_dimer",
    "ab_dimer",
    "com_dimer",
    "bond_real_space",
    "atom_real_space",
    "an_monomer",
)
_PARAMETER_NAMES = {  # gap_fit key -> LabelKeys field
    "energy_parameter_name": "energy",
    "force_parameter_name": "forces",
    "virial_parameter_name": "virial",
    "stress_parameter_name": "stress",
    "config_type_parameter_name": "config_type",
    "force_mask_parameter_name": "force_mask",
}
_SUPPORTED = (
    "at_file",
    "gp_file",
    "gap",
    "default_sigma",
    "config_type_sigma",
    "sigma_per_atom",
    "e0",
    "e0_method",
    "sparse_jitter",
    "rnd_seed",
    "core_ip_args",
    "core_param_file",
    "e0_offset",
    *_PARAMETER_NAMES,
)
QUIP_POTENTIAL = "quippy.potential:Potential"  # gap_fit's core potential, in Python
DEFAULT_CORE_PARAM_FILE = "quip_params.xml"  # gap_fit's default core_param_file
_DESCRIPTORS = ("soap", "distance_2b", "distance_nb", "angle_3b")


@dataclass(frozen=True)
class GapFitCommand:
    """A parsed gap_fit command line.

    Attributes:
        at_file: training data (extxyz).
        gp_file: output model file (``.npz``; gap_fit's ``.xml`` suffix replaced).
        gap_kwargs: keyword arguments of ``GAP`` (soap, distance_2b, default_sigma,
            config_type_sigma, sigma_per_atom, e0, e0_method, sparse_jitter, rnd_seed,
            keys; baseline and baseline_kwargs from core_ip_args), validated.
        ignored: notes on the arguments that were accepted but change nothing, on
            the renamed ``gp_file`` and on the core potential, to show to the user.
    """

    at_file: str
    gp_file: str
    gap_kwargs: dict[str, Any]
    ignored: tuple[str, ...] = ()


def parse_gap_fit_command(args: Sequence[str] | str) -> GapFitCommand:
    """Parse gap_fit's arguments (after shell word splitting) into ``GAP`` settings.

    Args:
        args: the arguments as the shell passes them, e.g.
            ``["at_file=train.xyz", "gap={soap", "cutoff=5.0", "n_max=8}", ...]``; a
            leading ``gap_fit`` (the program name) is skipped, and a single string is
            split like a shell would (``shlex.split``).

    Returns:
        The training file, the model file and the ``GAP`` keyword arguments.

    Raises:
        GapfitError: an unsupported or misspelt key (with the nearest supported key),
            a key given twice, unbalanced braces, or an invalid value.
    """
    given: dict[str, str] = {}  # canonical key -> value as written
    spelt: dict[str, str] = {}  # canonical key -> key as written
    notes: list[str] = []
    for key, value in split_arguments(args):
        name = ALIASES.get(key, key)
        if name in given:
            twice = f"'{name}'" if spelt[name] == key else f"'{spelt[name]}' / '{key}'"
            raise GapfitError(f"gap_fit option {twice} is given twice; give it once.")
        if name in IGNORED:
            notes.append(f"{key}={value} ignored: {IGNORED[name]}.")
        elif name not in _SUPPORTED:
            raise GapfitError(_unsupported(key))
        given[name], spelt[name] = value, key

    def scalar(name: str, default: str = "") -> str:
        return _unquote(given.get(name, default))

    for name, example in (("at_file", "at_file=train.xyz"), ("gap", "gap={soap ...}")):
        if not scalar(name):
            raise GapfitError(
                f"gap_fit argument {name}= is missing (gap_fit requires it too); "
                f"add e.g. {example}."
            )
    gp_file = scalar("gp_file")
    if not gp_file:
        gp_file = DEFAULT_GP_FILE
        notes.append(f"gp_file not given: using gap_fit's default {gp_file}.")
    if PurePath(gp_file).suffix.lower() == ".xml":
        npz = str(PurePath(gp_file).with_suffix(".npz"))
        notes.append(
            f"gp_file={gp_file}: gapfit writes its own .npz model format, not GAP "
            f"XML; writing {npz}."
        )
        gp_file = npz

    if "e0_offset" in given:
        offset = _number(scalar("e0_offset"), "e0_offset")
        if offset != 0.0:
            raise GapfitError(
                f"e0_offset={given['e0_offset']}: a shift of every element's e0 is not "
                "implemented; give the shifted values as e0={Cu:...:Au:...} instead."
            )
        notes.append("e0_offset=0.0 changes nothing (gap_fit's default).")
    found = parse_gap_string(given["gap"])
    added: list[str] = []
    for word in GAP_FIT_DEFAULTS:
        for k, text in enumerate(found.get(word, [])):
            found[word][k], extra = with_gap_fit_defaults(text, word)
            added += [f"{word} {x}" for x in extra]
    if added:
        notes.append(
            "gap_fit's defaults for settings the line leaves out: "
            + ", ".join(dict.fromkeys(added))
            + " (gapfit's own options default to a 1.0 Å transition, CUR points for "
            "SOAP and uniform ones for the 2- and 3-body terms)."
        )
    defaults = LabelKeys()
    kwargs = gap_kwargs(
        soap=found.get("soap"),
        distance_2b=found.get("distance_2b"),
        angle_3b=found.get("angle_3b"),
        default_sigma=given.get("default_sigma", DEFAULT_SIGMA),
        config_type_sigma=given.get("config_type_sigma"),
        sigma_per_atom=parse_gap_bool(scalar("sigma_per_atom", "T"), "sigma_per_atom"),
        e0=given.get("e0"),
        e0_method=scalar("e0_method", "isolated"),
        sparse_jitter=_number(scalar("sparse_jitter", "1e-8"), "sparse_jitter"),
        rnd_seed=_integer(scalar("rnd_seed", "1"), "rnd_seed"),
        keys=LabelKeys(
            **{
                attr: scalar(key, getattr(defaults, attr))
                for key, attr in _PARAMETER_NAMES.items()
            }
        ),
        gap_fit_style=True,
    )
    if scalar("core_ip_args") or scalar("core_param_file"):
        kwargs["baseline"], kwargs["baseline_kwargs"] = core_baseline(
            scalar("core_ip_args"), scalar("core_param_file")
        )
        notes.append(
            f"core_ip_args: the core potential is gapfit's baseline, "
            f"{QUIP_POTENTIAL} with {kwargs['baseline_kwargs']} (needs quippy-ase); "
            "the model file names that parameter file, so keep it there."
        )
    return GapFitCommand(scalar("at_file"), gp_file, kwargs, tuple(notes))


def core_baseline(ip_args: str, param_file: str) -> tuple[str, dict[str, str]]:
    """gap_fit's core potential (``core_ip_args``, ``core_param_file``) as a
    baseline: quippy's ``Potential`` (its ASE calculator) with those arguments, the
    parameter file's path made absolute.

    Raises:
        GapfitError: a parameter file without ``core_ip_args``.
    """
    if not ip_args:
        raise GapfitError(
            f"core_param_file={param_file} without core_ip_args: say which potential "
            "of the file to use, e.g. core_ip_args={IP Glue}."
        )
    path = os.path.abspath(param_file or DEFAULT_CORE_PARAM_FILE)
    return QUIP_POTENTIAL, {"args_str": ip_args, "param_filename": path}


def split_arguments(args: Sequence[str] | str) -> list[tuple[str, str]]:
    """gap_fit's arguments as ``(key, value)`` pairs (keys lower-case, values raw).

    Raises:
        GapfitError: unbalanced braces or an argument that is not ``key=value``.
    """
    tokens = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    tokens = [t for t in tokens if t.strip()]  # e.g. shlex's "\n" of a "\\<newline>"
    if tokens and PurePath(tokens[0]).name == "gap_fit":
        tokens = tokens[1:]
    pairs = []
    for item in join_braces(tokens):
        _check_braces(item)
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key or " " in key:
            raise GapfitError(
                f"unexpected argument '{item}': gap_fit arguments are key=value, "
                "e.g. at_file=train.xyz (values with spaces in braces: "
                "default_sigma={0.001 0.05 0.05 0.0})."
            )
        pairs.append((key, value.strip()))
    return pairs


def join_braces(tokens: Sequence[str]) -> list[str]:
    """Re-join tokens that the shell split inside ``{...}``, joined by one space.

    ``["gap={soap", "cutoff=5}", "rnd_seed=1"]`` -> ``["gap={soap cutoff=5}",
    "rnd_seed=1"]``. A brace left open swallows the rest (``split_arguments`` then
    reports it).
    """
    out: list[str] = []
    depth = 0
    for tok in tokens:
        if depth > 0:
            out[-1] += " " + tok
        else:
            out.append(tok)
        depth = max(0, depth + tok.count("{") - tok.count("}"))
    return out


def parse_gap_string(text: str) -> dict[str, list[str]]:
    """gap_fit's ``gap={desc1 ... : desc2 ...}`` as ``{descriptor: [settings text of
    each term of that kind, in order]}`` (``soap``, ``distance_2b``, ``angle_3b``;
    absent ones left out; a ``distance_Nb`` term is a ``distance_2b`` one, or an
    ``angle_3b`` one with ``order=3``, whose text keeps its word for the parser).

    Descriptors are separated by ``:`` or ``;`` outside inner braces, as in gap_fit;
    ``gap_kwargs`` validates each.
    """
    body = _unquote(text)
    found: dict[str, list[str]] = {}
    for part in split_top_level(body, ":;"):
        words = part.split()
        if not words:
            raise GapfitError(
                f"gap={text}: an empty descriptor; separate descriptors with ':', "
                "e.g. gap={distance_2b cutoff=5.0 : soap cutoff=5.0 n_max=8}."
            )
        name = words[0].lower()
        if "=" in name:
            raise GapfitError(
                f"gap={text}: descriptor '{part.strip()}' does not start with its "
                "type; write e.g. gap={soap " + part.strip() + "}."
            )
        if name not in _DESCRIPTORS:
            hint = ""
            if name not in UNSUPPORTED_DESCRIPTORS:
                close = difflib.get_close_matches(name, _DESCRIPTORS, n=1, cutoff=0.6)
                hint = f" Did you mean '{close[0]}'?" if close else ""
            raise GapfitError(
                f"gap_fit descriptor '{words[0]}' is not supported by gapfit; it "
                "implements soap, distance_2b, angle_3b and distance_Nb of order 2 "
                f"and 3.{hint}"
            )
        if name == "distance_nb":  # a 2-body or 3-body term by its order, word kept
            orders = [w[6:] for w in words if w.lower().startswith("order=")]
            kind = "angle_3b" if orders and orders[0].strip() == "3" else "distance_2b"
            found.setdefault(kind, []).append(" ".join(words))
        else:
            found.setdefault(name, []).append(" ".join(words[1:]))
    return found


def _terms(
    value: Settings | Sequence[Settings] | None,
    parse: Callable[[Settings | None], dict],
    default: bool = False,
) -> dict | list[dict] | None:
    """One term's parsed settings, a list for several, or None for none (the
    defaults' if ``default``)."""
    given = [value] if isinstance(value, str | Mapping) else list(value or ())
    if not given:
        return parse(None) if default else None
    parsed = [parse(v) for v in given]
    return parsed[0] if len(parsed) == 1 else parsed


def gap_kwargs(
    *,
    soap: Settings | Sequence[Settings] | None,
    distance_2b: Settings | Sequence[Settings] | None,
    default_sigma: str,
    config_type_sigma: str | None,
    sigma_per_atom: bool,
    e0: str | None,
    e0_method: str,
    sparse_jitter: float,
    rnd_seed: int,
    keys: LabelKeys,
    gap_fit_style: bool = False,
    angle_3b: Settings | Sequence[Settings] | None = None,
) -> dict[str, Any]:
    """Validated ``GAP`` keyword arguments from command-line text.

    Both ``gapfit fit`` styles call this, so they build identical estimators. Without
    ``soap`` but with ``distance_2b`` or ``angle_3b`` the model has no SOAP term
    (``soap=None``);
    with neither, SOAP uses its defaults. Descriptor settings are returned parsed
    (``parse_soap`` / ``parse_distance_2b`` / ``parse_angle_3b`` dicts with every
    default filled in).

    Args:
        soap, distance_2b, angle_3b: descriptor settings ``"key=value ..."``, a
            list of them for several terms of one kind (parsed into a list), or
            ``None`` (an empty list too).
        default_sigma: ``"E F V [H]"`` (eV/atom, eV/Å, eV/atom, ignored), braces and
            commas allowed.
        config_type_sigma: ``"name:E:F:V:H:name2:..."`` (braces allowed) or ``None``.
        sigma_per_atom: energy/virial sigmas per atom.
        e0: ``"Cu:-0.1:Au:-0.2"`` (or ``"Cu:-0.1 Au:-0.2"``, braces allowed), eV.
        e0_method: one of ``E0_METHODS``.
        sparse_jitter: eV², >= 0.
        rnd_seed: >= 0.
        keys: label names in the training file.
        gap_fit_style: name options in messages as gap_fit does (``default_sigma=``)
            rather than as ``gapfit fit`` does (``--default-sigma``).
    """

    def opt(name: str) -> str:
        return f"{name}=" if gap_fit_style else f"--{name.replace('_', '-')} "

    if e0 is not None and is_number(_unquote(e0).strip()):
        per_element = "e0={Cu:-0.1:Au:-0.2}" if gap_fit_style else "--e0 'Cu:-0.1'"
        raise GapfitError(
            f"{opt('e0')}{e0}: one e0 for every element is not supported; use "
            f"{opt('e0_method')}average (the mean energy per atom) or give one value "
            f"per element, e.g. {per_element}."
        )
    method = str(e0_method).strip().lower()
    if method not in E0_METHODS:
        raise GapfitError(
            f"{opt('e0_method')}{e0_method} is not an e0 method; use one of "
            f"{', '.join(E0_METHODS)}."
        )
    if not (math.isfinite(sparse_jitter) and sparse_jitter >= 0):
        raise GapfitError(
            f"{opt('sparse_jitter')}{sparse_jitter}: must be >= 0 and finite (eV², "
            "added to the diagonal of K_mm; e.g. 1e-8)."
        )
    if rnd_seed < 0:
        raise GapfitError(
            f"{opt('rnd_seed')}{rnd_seed}: gapfit fits are always seeded (gap_fit's "
            "-1 means unseeded); give a seed >= 0, e.g. 1."
        )
    pair = _terms(distance_2b, parse_distance_2b)
    triplet = _terms(angle_3b, parse_angle_3b)
    if isinstance(triplet, list):
        raise GapfitError(f"{len(triplet)} angle_3b terms given; {ONE_ANGLE_3B}")
    return {
        "soap": _terms(soap, parse_soap, default=pair is None and triplet is None),
        "distance_2b": pair,
        "angle_3b": triplet,
        "default_sigma": parse_default_sigma(
            default_sigma, "default_sigma" if gap_fit_style else "--default-sigma"
        ),
        "config_type_sigma": (
            parse_config_type_sigma(_unquote(config_type_sigma))
            if config_type_sigma and _unquote(config_type_sigma).strip()
            else None
        ),
        "sigma_per_atom": bool(sigma_per_atom),
        "e0": parse_e0(e0) if e0 else None,
        "e0_method": method,
        "sparse_jitter": float(sparse_jitter),
        "rnd_seed": int(rnd_seed),
        "keys": keys,
    }


def parse_default_sigma(
    text: str, option: str = "--default-sigma"
) -> tuple[float, ...]:
    """``"0.001 0.05 0.05 [0.0]"`` (or gap_fit's ``{...}``) as validated floats.

    Args:
        text: energy (eV/atom), force (eV/Å), virial (eV/atom) and optionally the
            hessian sigma (ignored), separated by spaces or commas.
        option: the option's name in error messages: ``--default-sigma`` or
            gap_fit's ``default_sigma``.
    """
    gap_fit_style = not option.startswith("-")
    given = f"{option}={text}" if gap_fit_style else f"{option} {text!r}"
    example = "={0.001 0.05 0.05 0.0}" if gap_fit_style else " " + DEFAULT_SIGMA
    tokens = [t for t in re.split(r"[\s,{}]+", text) if t]
    try:
        values = tuple(float(t) for t in tokens)
    except ValueError:
        values = ()
    if len(values) not in (3, 4):
        raise GapfitError(
            f"{given}: expected 3 or 4 numbers 'energy force virial [hessian]' "
            f"(eV/atom, eV/Å, eV/atom), e.g. {option}{example}."
        )
    for name, value in zip(("energy", "force", "virial"), values, strict=False):
        if not (math.isfinite(value) and value > 0):
            raise GapfitError(
                f"{given}: the {name} sigma is {value}, it must be "
                "> 0 and finite (it is a noise standard deviation; gap_fit's default "
                "is 0.001 0.05 0.05 0.0, the 4th value, hessian, is ignored)."
            )
    return values


# ------------------------------------------------------------------------------------
def _unsupported(key: str) -> str:
    """The error message for a key gapfit does not accept."""
    message = f"gap_fit option '{key}' is not supported by gapfit."
    if key in SOAP_DEFAULTS or key in DISTANCE_2B_DEFAULTS or key in ANGLE_3B_DEFAULTS:
        return (
            f"{message} '{key}' is a descriptor setting: put it inside "
            f"gap={{soap ... {key}=...}} (did the braces get lost?)."
        )
    if key not in UNSUPPORTED:
        names = [*_SUPPORTED, *IGNORED, *ALIASES]
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.8)
        if close:
            return f"{message} Did you mean '{close[0]}'?"
    return f"{message} `gapfit fit --help` lists the gap_fit options it understands."


def _check_braces(item: str) -> None:
    depth = 0
    for char in item:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            raise GapfitError(
                f"unbalanced braces in '{item}': a '}}' closes nothing; check the "
                "braces of gap={...} and default_sigma={...}."
            )
    if depth > 0:
        raise GapfitError(
            f"unbalanced braces in '{item}': {depth} '{{' never closed; add the "
            "missing '}'."
        )


def _unquote(text: str) -> str:
    """Drop one pair of enclosing braces or double quotes (gap_fit's delimiters)."""
    text = text.strip()
    if len(text) >= 2 and (text[0], text[-1]) in (("{", "}"), ('"', '"')):
        return text[1:-1].strip()
    return text


def is_number(text: str) -> bool:
    """True if ``text`` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise GapfitError(f"{key}={text} is not a number.") from None


def _integer(text: str, key: str) -> int:
    value = _number(text, key)
    if not (math.isfinite(value) and value == int(value)):
        raise GapfitError(f"{key}={text} is not an integer.")
    return int(value)
