"""Command line: ``gapfit fit | predict | eval | info``, a thin layer over the API.

Options of ``fit`` map 1:1 onto ``GAP.__init__`` and are named after gap_fit's
(``--at-file``, ``--gp-file``, ``--default-sigma``, ...); ``fit`` also takes gap_fit's
own ``key=value`` arguments instead (``gapfit.gap_fit_args``). Every ``GapfitError`` is
printed as ``Error: <message>`` on stderr with exit status 2, without a traceback;
output files are written atomically, so a failed command leaves none behind.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase.data
import ase.io
import click
import numpy as np
from click.core import ParameterSource

from gapfit import __version__
from gapfit.calibration import (
    MIN_CONFIGS,
    MIN_VALUES,
    describe,
    std_samples,
    summary,
)
from gapfit.calibration import calibrate as calibrate_model
from gapfit.crossval import calibrate_cv
from gapfit.data import LabelKeys, check_species, read_frames
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import (
    ALIASES,
    DEFAULT_SIGMA,
    E0_METHODS,
    IGNORED,
    OPTION_MAP,
    gap_kwargs,
    is_number,
    join_braces,
    parse_gap_fit_command,
    split_arguments,
)
from gapfit.gapstring import (
    ANGLE_3B_DEFAULTS,
    ANGLE_3B_HELP,
    DISTANCE_2B_DEFAULTS,
    DISTANCE_2B_HELP,
    SOAP_DEFAULTS,
    SOAP_HELP,
)
from gapfit.hyperparameters import format_report
from gapfit.model import Model, atomic_write
from gapfit.report import error_table, format_error_table
from gapfit.selection import SCORES, STRATEGIES
from gapfit.tune import CRITERIA, format_rows, grid_search
from gapfit.uncertainty import format_uncertainty_table, uncertainty_table


def label_key_options(func: Callable) -> Callable:
    """Add gap_fit's ``--*-parameter-name`` options, passed on as one ``keys``."""
    options = [
        ("energy", "energy", "Info key of the total energy (eV)."),
        ("force", "forces", "Array key of the forces (eV/Å)."),
        ("virial", "virial", "Info key of the virial (eV, = -stress * volume)."),
        ("stress", "stress", "Info key of the stress (eV/Å³, ASE sign)."),
        ("config-type", "config_type", "Info key of the config type."),
        (
            "force-mask",
            "force_mask",
            "Array key of the per-atom force mask (logical; T: that atom's force "
            "is not fitted, nor scored).",
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        names = {
            n: kwargs.pop(f"{n.replace('-', '_')}_parameter_name")
            for n, _, _ in options
        }
        keys = LabelKeys(
            energy=names["energy"],
            forces=names["force"],
            virial=names["virial"],
            stress=names["stress"],
            config_type=names["config-type"],
            force_mask=names["force-mask"],
        )
        return func(*args, keys=keys, **kwargs)

    for name, default, text in reversed(options):
        gap_name = f"{name.replace('-', '_')}_parameter_name"
        wrapper = click.option(
            f"--{name}-parameter-name",
            default=default,
            show_default=True,
            help=f"{text} [gap_fit: {gap_name}]",
        )(wrapper)
    return wrapper


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a GapfitError into ``Error: <message>`` on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GapfitError as err:
            click.echo(f"Error: {err}", err=True)
            raise SystemExit(2) from None

    return wrapper


model_file_option = click.option(
    "--gp-file",
    required=True,
    metavar="FILE",
    help="Model file written by `gapfit fit`. [gap_fit/quip: param_filename]",
)


def baseline_options(func: Callable) -> Callable:
    """``--baseline`` and ``--baseline-kwargs`` (``GAP``'s baseline)."""
    func = click.option(
        "--baseline-kwargs",
        default=None,
        metavar="JSON",
        help="Keyword arguments of the baseline calculator as a JSON object, e.g. "
        '\'{"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}\'. [gapfit only]',
    )(func)
    return click.option(
        "--baseline",
        default=None,
        metavar="NAME",
        help="A potential under the GP (gap_fit's core_ip_args): an ASE calculator "
        "named zbl (gapfit.zbl), lj, emt or module:Class. The GP learns the labels "
        "minus its energy, "
        "forces and virial; predictions add them back. The model file names it, so "
        "it must be importable where the model is used. [gap_fit: core_ip_args]",
    )(func)


def settings_options(
    sigma_help: str, e0_method: str, e0_help: str
) -> Callable[[Callable], Callable]:
    """``--distance-2b``, ``--angle-3b``, ``--default-sigma``, ``--e0`` and
    ``--e0-method`` for the commands besides ``fit`` that build a ``GAP`` (``learn``,
    ``tune``)."""

    def add(func: Callable) -> Callable:
        for option in reversed(
            [
                click.option(
                    "--distance-2b",
                    multiple=True,
                    metavar="SETTINGS",
                    help="As for fit.",
                ),
                click.option(
                    "--angle-3b",
                    multiple=True,  # given twice: an error, not the last one
                    metavar="SETTINGS",
                    help="As for fit.",
                ),
                click.option(
                    "--default-sigma",
                    default=DEFAULT_SIGMA,
                    show_default=True,
                    metavar="E F V [H]",
                    help=sigma_help,
                ),
                click.option("--e0", default=None, metavar="SPEC", help="As for fit."),
                click.option(
                    "--e0-method",
                    type=click.Choice(E0_METHODS),
                    default=e0_method,
                    show_default=True,
                    help=e0_help,
                ),
            ]
        ):
            func = option(func)
        return func

    return add


def dask_options(func: Callable) -> Callable:
    """Add ``--dask-scheduler`` / ``--dask-workers``, passed on as one ``dask``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dask = (kwargs.pop("dask_scheduler"), kwargs.pop("dask_workers"))
        return func(*args, dask=dask, **kwargs)

    wrapper = click.option(
        "--dask-workers",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Run on a dask cluster of N worker processes on this machine. "
        "[gapfit only]",
    )(wrapper)
    return click.option(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="Run on the workers of the dask scheduler at ADDRESS (tcp://host:8786); "
        "they read the extxyz input at the same path. [gapfit only]",
    )(wrapper)


def _dask_client(dask: tuple[str | None, int | None]) -> Any:
    """A context giving the dask client of ``--dask-*``, or None without them."""
    if not any(dask):
        return contextlib.nullcontext(None)
    from gapfit.cluster import dask_client  # imports dask only when used

    return dask_client(*dask)


def _frames_and_predictions(
    model: Model,
    xyz: str,
    keys: LabelKeys,
    require: tuple[str, ...],
    std: bool | str,
    dask: tuple[str | None, int | None],
) -> tuple[list, list[dict]]:
    """Read FILE and predict it, in this process or on the dask cluster."""
    with _dask_client(dask) as client:
        if client is not None:
            from gapfit.cluster import predict_file

            return predict_file(model, xyz, client, keys, require, std)
    frames = read_frames(xyz, keys, require=require)
    check_species(frames, model.species)
    return frames, model.predict(frames, std=std, wheres=[f.where for f in frames])


class _FitCommand(click.Command):
    """Reads the arguments as gap_fit users type them, before click parses them.

    ``--default-sigma`` takes 3 or 4 separate numbers, as gap_fit's does:
    ``--default-sigma 0.001 0.05 0.05 0.0`` is joined into one string (click options
    cannot take a variable number of values). Words that the shell split inside braces
    (``gap={soap cutoff=5.0 ...}``) are joined again, so that click sees one
    ``key=value`` argument, and a ``-0.1`` inside braces is never taken for an option.
    An unquoted ``--soap cutoff=5.0 n_max=4`` (the shell split the setting at its
    spaces) is joined again too: a descriptor key is never a gap_fit argument of its
    own, so ``n_max=4`` can only belong to the option before it.
    """

    # option: does a following word continue its value?
    greedy: dict[str, Callable[[str], bool]] = {
        "--default-sigma": lambda word: is_number(word.strip("{}")),
        "--soap": lambda word: word.partition("=")[0] in SOAP_DEFAULTS,
        "--distance-2b": lambda word: word.partition("=")[0] in DISTANCE_2B_DEFAULTS,
        "--angle-3b": lambda word: word.partition("=")[0] in ANGLE_3B_DEFAULTS,
    }

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        k = 0
        while k < len(args):
            name, eq, first = args[k].partition("=")
            if name not in self.greedy:
                out.append(args[k])
                k += 1
                continue
            values = [first] if eq else []  # "--default-sigma=0.001 0.05 ..." too
            k += 1
            if not values and name != "--default-sigma" and k < len(args):
                values.append(args[k])  # a descriptor option's own (quoted) value
                k += 1
            while k < len(args) and self.greedy[name](args[k]):
                values.append(args[k])
                k += 1
            out += [name, " ".join(values)] if values else [name]
        return super().parse_args(ctx, join_braces(out))


def _check_writable(path: str, option: str) -> None:
    """Fail before long work if ``path`` cannot be written atomically."""
    parent = Path(path).resolve().parent
    if Path(path).is_dir():
        raise GapfitError(f"{option} {path} is a directory; give a file name.")
    if not parent.is_dir():
        raise GapfitError(
            f"{option} {path}: directory {parent} does not exist; create it first."
        )
    if not os.access(parent, os.W_OK):
        raise GapfitError(f"{option} {path}: directory {parent} is not writable.")


def _symbol(z: int | str) -> str:
    return ase.data.chemical_symbols[int(z)]


def _settings_help(defaults: dict[str, Any], help: dict[str, str]) -> str:
    def shown(v: Any) -> str:
        return "T" if v is True else "-" if v is None else str(v)  # -: unset

    return "\n".join(
        f"  {f'{k}={shown(v)}':<30} {help.get(k, '')}" for k, v in defaults.items()
    )


def _gap_fit_help() -> str:
    """The gap_fit key -> option -> GAP argument table of ``gapfit fit --help``."""
    rows = [f"  {'gap_fit':<27} {'gapfit fit':<37} GAP(...)"]
    rows += [
        f"  {key:<27} {option:<37} {kwarg}"
        for key, (option, kwarg) in OPTION_MAP.items()
    ]
    notes = (
        "gap_fit's other spellings work too: "
        + ", ".join(f"{alias} (={key})" for alias, key in ALIASES.items())
        + f"; {', '.join(IGNORED)} are accepted and ignored (output options); "
        "gp_file=NAME.xml writes NAME.npz; core_ip_args and core_param_file make "
        "quippy's Potential the --baseline; any other gap_fit key is an error."
    )
    rows.append(textwrap.fill(notes, 92, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------
@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="gapfit")
def main() -> None:
    """Gaussian Approximation Potentials: JAX SOAP + sparse GP, with uncertainties.

    \b
    gapfit fit     fit a model to labelled extxyz data (gap_fit-style options)
    gapfit predict write predicted E, F, virial/stress and their stds to extxyz
    gapfit eval    error table of a model against labelled data (--plot: PNGs)
    gapfit calibrate  calibrate the stds on labelled held-out data
    gapfit info    what a model file holds
    gapfit learn   active learning: label the most uncertain structures (ASE labeller)
    gapfit serve   force engine of an i-PI driver (i-PI, ASE's SocketIOCalculator)
    gapfit tune    choose descriptor settings by cross-validation and evidence
    """


_FIT_EPILOG = "\n\n".join(
    [
        "\b\ngap_fit's own key=value arguments work in place of the options (one "
        "style or the other;\n--chunk-atoms, --quiet, --dry-run and --optimise-* go "
        "with either), e.g.\n"
        "  gapfit fit at_file=train.xyz gp_file=model.npz \\\n"
        "    gap={distance_2b cutoff=5.0 delta=1.0 theta_uniform=1.0 n_sparse=20 :\n"
        "         soap cutoff=5.0 n_max=8 l_max=6 atom_sigma=0.5 zeta=4 n_sparse=500} "
        "\\\n"
        "    default_sigma={0.001 0.05 0.05 0.0} e0_method=isolated rnd_seed=1",
        "\b\n" + _gap_fit_help(),
        '\b\nSOAP settings (--soap "key=value ...", gap_fit names, defaults):\n'
        + _settings_help(SOAP_DEFAULTS, SOAP_HELP),
        '\b\n2-body settings (--distance-2b "key=value ...", gap_fit names, '
        "defaults):\n" + _settings_help(DISTANCE_2B_DEFAULTS, DISTANCE_2B_HELP),
        '\b\n3-body settings (--angle-3b "key=value ...", gap_fit names, '
        "defaults):\n" + _settings_help(ANGLE_3B_DEFAULTS, ANGLE_3B_HELP),
    ]
)


@main.command(cls=_FitCommand, epilog=_FIT_EPILOG)
@click.argument("gap_fit_args", nargs=-1, metavar="[GAP_FIT_ARGS]...")
@click.option(
    "--at-file",
    default=None,
    metavar="FILE",
    help="Training configurations (extxyz) with energies (eV), forces "
    "(eV/Å) and optionally virials (eV) or stresses (eV/Å³). "
    "[gap_fit: at_file]",
)
@click.option(
    "--gp-file",
    default=None,
    metavar="FILE",
    help="Output model file (.npz, written atomically). [gap_fit: gp_file]",
)
@click.option(
    "--soap",
    multiple=True,
    metavar="SETTINGS",
    help="SOAP descriptor, kernel and sparsification settings as "
    "'key=value ...' (see below; unknown keys are errors). Repeat it for several "
    "SOAP terms (e.g. two cutoffs; their energies add). Without --soap the "
    "model has a SOAP term with the defaults below, unless --distance-2b or "
    "--angle-3b is given: then it has no SOAP term. [gap_fit: gap={soap ...}]",
)
@click.option(
    "--distance-2b",
    multiple=True,
    metavar="SETTINGS",
    help="Add a 2-body term: squared-exponential GP of the pair distance per "
    "species pair, settings 'key=value ...' (see below; 'distance_Nb order=2 ...' "
    "reads gap_fit's distance_Nb); repeat it for several. [gap_fit: "
    "gap={distance_2b ...} or gap={distance_Nb order=2 ...}]",
)
@click.option(
    "--angle-3b",
    multiple=True,  # given twice: an error, not the last one
    metavar="SETTINGS",
    help="Add a 3-body term: ARD squared-exponential GP of each triplet's "
    "(r_ij + r_ik, (r_ij - r_ik)^2, r_jk) per centre species and neighbour pair, "
    "settings 'key=value ...' (see below; 'distance_Nb order=3 ...' reads gap_fit's "
    "distance_Nb: the triangle's three distances, data of one element). [gap_fit: "
    "gap={angle_3b ...} or gap={distance_Nb order=3 ...}]",
)
@click.option(
    "--default-sigma",
    default=DEFAULT_SIGMA,
    show_default=True,
    metavar="E F V [H]",
    help="Noise stds: energy eV/atom, force eV/Å, virial eV/atom, hessian "
    "(ignored); 3 or 4 numbers. [gap_fit: default_sigma]",
)
@click.option(
    "--config-type-sigma",
    default=None,
    metavar="SPEC",
    help="Per config_type sigmas 'name:E:F:V:H:name2:...' in the units of "
    "--default-sigma. [gap_fit: config_type_sigma]",
)
@click.option(
    "--sigma-per-atom/--no-sigma-per-atom",
    default=True,
    show_default=True,
    help="Energy and virial sigmas are per atom (scaled by sqrt(n_atoms)). "
    "[gap_fit: sigma_per_atom]",
)
@click.option(
    "--e0",
    default=None,
    metavar="SPEC",
    help="Isolated-atom energies in eV, 'Cu:-0.1 Au:-0.2' or "
    "'{Cu:-0.1:Au:-0.2}'; override --e0-method for these elements. "
    "[gap_fit: e0]",
)
@click.option(
    "--e0-method",
    type=click.Choice(E0_METHODS),
    default="isolated",
    show_default=True,
    help="How to get e0: 1-atom configs with config_type=isolated_atom, "
    "the mean energy per atom, a least-squares fit per element, or --e0 "
    "only. [gap_fit: e0_method]",
)
@click.option(
    "--sparse-jitter",
    type=float,
    default=1e-8,
    show_default=True,
    help="Added to the diagonal of K_mm, eV². [gap_fit: sparse_jitter]",
)
@click.option(
    "--rnd-seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the sparse-point selection. [gap_fit: rnd_seed]",
)
@label_key_options
@click.option(
    "--chunk-atoms",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Atoms per streamed chunk: a memory knob, the model does not "
    "depend on it. [gapfit only]",
)
@click.option(
    "--descriptor-backend",
    type=click.Choice(["jax", "dscribe"]),
    default="jax",
    show_default=True,
    help="Who computes the SOAP values the sparse points are chosen from: gapfit's "
    "JAX SOAP or dscribe's SOAP.create (needs weighting=poly or none). Kernel rows "
    "always use the JAX SOAP. [gapfit only]",
)
@click.option("--quiet", is_flag=True, help="No progress bars. [gapfit only]")
@baseline_options
@click.option(
    "--optimise-hyperparameters",
    is_flag=True,
    help="Choose each term's delta and one factor on the sigmas of each quantity "
    "(energy, force, virial) by maximising the DTC evidence; the model stores the "
    "final values and the summary prints them. [gapfit only]",
)
@click.option(
    "--optimise-per-config-type",
    is_flag=True,
    help="As --optimise-hyperparameters (implied), with one sigma factor per "
    "quantity and config_type. [gapfit only]",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the settings and data, print the sizes, predicted peak memory "
    "and wall time of the fit, and exit without fitting or writing the model. "
    "[gapfit only]",
)
@dask_options
@_user_errors
def fit(
    gap_fit_args: tuple[str, ...],
    at_file: str | None,
    gp_file: str | None,
    soap: tuple[str, ...],
    distance_2b: tuple[str, ...],
    angle_3b: tuple[str, ...],
    default_sigma: str,
    config_type_sigma: str | None,
    sigma_per_atom: bool,
    e0: str | None,
    e0_method: str,
    sparse_jitter: float,
    rnd_seed: int,
    keys: LabelKeys,
    chunk_atoms: int,
    descriptor_backend: str,
    quiet: bool,
    baseline: str | None,
    baseline_kwargs: str | None,
    optimise_hyperparameters: bool,
    optimise_per_config_type: bool,
    dry_run: bool,
    dask: tuple[str | None, int | None],
) -> None:
    """Fit a sparse GAP to labelled configurations and write the model file.

    Settings come either from the options or from gap_fit's own key=value
    arguments (GAP_FIT_ARGS, see below). Example:

    \b
    gapfit fit --at-file train.xyz --gp-file model.npz \\
      --distance-2b "cutoff=5.0 delta=1.0 theta_uniform=1.0 n_sparse=20" \\
      --soap "cutoff=5.0 cutoff_transition_width=1.0 n_max=8 l_max=6 atom_sigma=0.5
              zeta=4 delta=1.0 n_sparse=500 sparse_method=cur_points" \\
      --default-sigma 0.001 0.05 0.05 0.0 --e0-method isolated --rnd-seed 1
    """
    # cheap checks first, so that typos fail before the data are read
    if gap_fit_args:
        split_arguments(gap_fit_args)  # not key=value: say so before anything else
        _refuse_mixed_styles(click.get_current_context())
        command = parse_gap_fit_command(gap_fit_args)
        for note in command.ignored:
            click.echo(f"note: {note}")
        at_file, gp_file, kwargs = command.at_file, command.gp_file, command.gap_kwargs
        gp_option = "gp_file"
        if "baseline" in kwargs and (baseline or baseline_kwargs):
            raise GapfitError(
                "core_ip_args and --baseline both set the baseline; give one."
            )
    else:
        for value, option in ((at_file, "--at-file"), (gp_file, "--gp-file")):
            if not value:
                raise GapfitError(
                    f"{option} FILE is missing; give it, or use gap_fit's arguments "
                    "(at_file=... gp_file=... gap={...}); see gapfit fit --help."
                )
        kwargs = gap_kwargs(
            soap=soap,
            distance_2b=distance_2b,
            angle_3b=angle_3b,
            default_sigma=default_sigma,
            config_type_sigma=config_type_sigma,
            sigma_per_atom=sigma_per_atom,
            e0=e0,
            e0_method=e0_method,
            sparse_jitter=sparse_jitter,
            rnd_seed=rnd_seed,
            keys=keys,
        )
        gp_option = "--gp-file"
    _check_writable(gp_file, gp_option)
    if baseline or baseline_kwargs:
        kwargs.update(baseline=baseline, baseline_kwargs=baseline_kwargs)
    gap = GAP(
        **kwargs,
        chunk_atoms=chunk_atoms,
        descriptor_backend=descriptor_backend,
        progress=not quiet,
        optimise_hyperparameters="per_config_type"
        if optimise_per_config_type
        else optimise_hyperparameters,
    )
    if dry_run:
        click.echo(f"dry run of gapfit fit on {at_file} (nothing fitted or written)")
        click.echo(gap.plan(at_file).table())
        return
    with _dask_client(dask) as client:
        gap.fit(at_file, client=client)
    info = gap.model_.info
    click.echo(_data_lines(info.get("data", {})))
    click.echo(
        "sparse points: "
        + "; ".join(
            f"{term} " + ", ".join(f"{k} {v}" for k, v in counts.items())
            for term, counts in info.get("n_sparse", {}).items()
        )
    )
    timings = gap.timings_
    click.echo(
        "timings: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
        + f" (total {sum(timings.values()):.2f} s)"
    )
    if "hyperparameters" in info:
        click.echo(format_report(info["hyperparameters"]))
    click.echo(
        "peak RSS: " + ", ".join(f"{k} {v:.2f} GiB" for k, v in gap.memory_gib_.items())
    )
    if "distributed" in info:
        workers = info["distributed"]["worker_peak_rss_gib"]
        click.echo(
            f"dask: {len(workers)} workers, {info['distributed']['n_shares']} shares; "
            "worker peak RSS: "
            + ", ".join(f"{v:.2f}" for v in workers.values())
            + " GiB"
        )
    click.echo(format_error_table(gap.training_errors_, "training errors"))
    gap.save(gp_file)
    click.echo(f"model written to {gp_file}")


def _refuse_mixed_styles(ctx: click.Context) -> None:
    """gap_fit's key=value arguments and the equivalent options are two styles of one
    setting; allowing both would make it unclear which one wins."""
    dashed = {o for option, _ in OPTION_MAP.values() for o in option.split("/")}
    given = [
        param.opts[0]
        for param in ctx.command.params
        if set(param.opts + param.secondary_opts) & dashed
        and ctx.get_parameter_source(param.name or "")
        not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    ]
    if given:
        raise GapfitError(
            "gap_fit-style key=value arguments and the options "
            f"{', '.join(given)} set the same things; use one style: "
            "either gap_fit's key=value arguments (at_file=... gap={...} "
            "default_sigma={...}) or the --options (gapfit fit --help lists both)."
        )


def _data_lines(data: dict) -> str:
    if not data:
        return "data: (no summary stored)"
    lines = [
        f"data: {data.get('n_configs')} configs, {data.get('n_atoms')} atoms, "
        f"{data.get('n_energies')} energies, "
        f"{data.get('n_force_components')} force components, "
        f"{data.get('n_virials')} virials"
    ]
    types = data.get("config_types", {})
    if types:
        lines.append("config types: " + ", ".join(f"{k} {v}" for k, v in types.items()))
    if "sha256" in data:
        lines.append(f"data sha256: {data['sha256']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------
@main.command()
@click.argument("xyz", metavar="FILE")
@model_file_option
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="FILE",
    help="Output extxyz (written atomically) with info energy, energy_std "
    "(eV), virial, virial_std (3x3, eV), stress, stress_std (6, eV/Å³, "
    "3D-periodic only) and arrays forces, forces_std (eV/Å), energies, "
    "energies_std (eV); for a calibrated model the *_std are calibrated and "
    "the DTC ones are written as *_std_raw.",
)
@click.option(
    "--std/--no-std",
    default=True,
    show_default=True,
    help="Also predict the *_std values (DTC posterior std, no noise; calibrated "
    "if the model is, see gapfit calibrate).",
)
@click.option(
    "--std-of",
    type=click.Choice(["all", "energy"]),
    default="all",
    show_default=True,
    help="With --std: the stds of every quantity, or of the energies only "
    "(energy_std and the local energies' energies_std, as quip's "
    "local_gap_variance; about twice the mean's cost, while the force and "
    "stress stds cost about 20–25 times the mean).",
)
@click.option(
    "--config-type-parameter-name",
    default="config_type",
    show_default=True,
    help="Info key of the config type, copied to the output.",
)
@dask_options
@_user_errors
def predict(
    xyz: str,
    gp_file: str,
    output: str,
    std: bool,
    std_of: str,
    config_type_parameter_name: str,
    dask: tuple[str | None, int | None],
) -> None:
    """Predict energies, forces, virials/stresses (and stds) of the configs in FILE."""
    model = Model.load(gp_file)
    _check_writable(output, "--output")
    keys = LabelKeys(config_type=config_type_parameter_name)
    t0 = time.perf_counter()
    which = std_of if std else False
    frames, preds = _frames_and_predictions(model, xyz, keys, (), which, dask)
    seconds = time.perf_counter() - t0
    images = []
    for frame, pred in zip(frames, preds, strict=True):
        atoms = frame.to_atoms()
        atoms.info.pop("config_type")
        atoms.info[config_type_parameter_name] = frame.config_type
        for key in (
            "energy",
            "energy_std",
            "energy_std_raw",
            "virial",
            "virial_std",
            "virial_std_raw",
            "stress",
            "stress_std",
            "stress_std_raw",
        ):
            if key in pred:
                atoms.info[key] = pred[key] if np.ndim(pred[key]) else float(pred[key])
        for key in (
            "forces",
            "forces_std",
            "forces_std_raw",
            "energies",
            "energies_std",
            "energies_std_raw",
        ):
            if key in pred:
                atoms.arrays[key] = np.asarray(pred[key], dtype=float)
        images.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, images, format="extxyz")
    atomic_write(output, buf.getvalue().encode())
    n_atoms = sum(len(f.numbers) for f in frames)
    rate = n_atoms / max(seconds, 1e-9)
    click.echo(
        f"predicted {len(frames)} configs, {n_atoms} atoms in {seconds:.2f} s "
        f"({rate:.1f} atoms/s, std={which or 'off'}, including reading and "
        f"jit compilation); wrote {output}"
    )


# ------------------------------------------------------------------------------------
@main.command(cls=_FitCommand)
@click.option(
    "--at-file", required=True, metavar="FILE", help="Training data (extxyz)."
)
@click.option(
    "--gp-file",
    required=True,
    metavar="FILE",
    help="Where the best grid point's model is written.",
)
@click.option(
    "--grid",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2,...",
    help="Values to try for one setting (repeat for more; every combination is "
    "fitted): a SOAP key (cutoff=4.5,5.0,5.5), distance_2b.<key> or "
    "angle_3b.<key>; a second SOAP or 2-body term's as soap_2.<key>, "
    "distance_2b_2.<key>.",
)
@click.option("--soap", multiple=True, metavar="SETTINGS", help="As for fit.")
@settings_options(
    "Starting noise stds (each grid point's are chosen by the evidence).",
    "isolated",
    "As for fit.",
)
@click.option("--rnd-seed", type=int, default=1, show_default=True)
@label_key_options
@baseline_options
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Cross-validation folds of each grid point.",
)
@click.option(
    "--select",
    type=click.Choice(CRITERIA),
    default="cv_forces",
    show_default=True,
    help="Best: lowest cross-validated force or energy RMSE, or highest evidence.",
)
@click.option(
    "--test",
    default=None,
    metavar="FILE",
    help="Labelled test data: each point's errors there too (never used to choose).",
)
@click.option("--json", "json_path", default=None, metavar="FILE", help="The table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def tune(
    at_file: str,
    gp_file: str,
    grid: tuple[str, ...],
    soap: tuple[str, ...],
    distance_2b: tuple[str, ...],
    angle_3b: tuple[str, ...],
    default_sigma: str,
    e0: str | None,
    e0_method: str,
    rnd_seed: int,
    keys: LabelKeys,
    baseline: str | None,
    baseline_kwargs: str | None,
    cv: int,
    select: str,
    test: str | None,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Choose descriptor settings on the data: fit every combination of the --grid
    values (each with delta and sigmas by the evidence), score each by K-fold
    cross-validation and by its evidence, print the table, save the best.

    \b
    gapfit tune --at-file train.xyz --gp-file best.npz --soap "n_max=8 l_max=6" \\
      --grid cutoff=4.5,5.0,5.5 --grid atom_sigma=0.4,0.5
    """
    _check_writable(gp_file, "--gp-file")
    kwargs = gap_kwargs(
        soap=soap,
        distance_2b=distance_2b,
        angle_3b=angle_3b,
        default_sigma=default_sigma,
        config_type_sigma=None,
        sigma_per_atom=True,
        e0=e0,
        e0_method=e0_method,
        sparse_jitter=1e-8,
        rnd_seed=rnd_seed,
        keys=keys,
    )
    gap = GAP(**kwargs, baseline=baseline, baseline_kwargs=baseline_kwargs)
    result = grid_search(
        gap, at_file, grid, cv, select=select, progress=not quiet, test=test
    )
    click.echo(format_rows(result))
    if json_path:
        atomic_write(json_path, json.dumps(result.rows, indent=1).encode())
    result.best.save(gp_file)
    click.echo(f"best model written to {gp_file}")


# ------------------------------------------------------------------------------------
@main.command(name="eval")
@click.argument("xyz", metavar="FILE")
@model_file_option
@click.option(
    "--json",
    "json_file",
    default=None,
    metavar="FILE",
    help="Also write the error table as JSON (RMSE/MAE in meV/atom, meV/Å).",
)
@click.option(
    "--std",
    "with_std",
    is_flag=True,
    help="Also judge the predicted stds (slower): coverage of the 68 % and 95 % "
    "intervals, NLL and Spearman correlation of error and std, for the DTC and, if "
    "the model is calibrated, the calibrated stds.",
)
@click.option(
    "--plot",
    "plot_dir",
    default=None,
    metavar="DIR",
    help="Write PNG parity plots (energy per atom, force components, virial per "
    "atom) and calibration plots (observed vs expected coverage, error vs std) "
    "into DIR (created if needed); implies --std.",
)
@click.option(
    "--std-json",
    "std_json_file",
    default=None,
    metavar="FILE",
    help="Also write the metrics of the predicted stds as JSON: per quantity and "
    "std (DTC, calibrated) n, RMSE, MAE (meV/atom, meV/Å), coverage_68, "
    "coverage_95 (fractions), nll, spearman; implies --std.",
)
@label_key_options
@dask_options
@_user_errors
def eval_(
    xyz: str,
    gp_file: str,
    json_file: str | None,
    with_std: bool,
    plot_dir: str | None,
    std_json_file: str | None,
    keys: LabelKeys,
    dask: tuple[str | None, int | None],
) -> None:
    """Error table (RMSE, MAE per config_type) of the model on labelled FILE."""
    model = Model.load(gp_file)
    for path, option in ((json_file, "--json"), (std_json_file, "--std-json")):
        if path:
            _check_writable(path, option)
    if plot_dir:
        from gapfit.plots import plot_folder  # matplotlib only when plotting

        plot_folder(plot_dir)
    with_std = with_std or plot_dir is not None or std_json_file is not None
    frames, preds = _frames_and_predictions(
        model, xyz, keys, ("energy",), with_std, dask
    )
    table = error_table(frames, preds)
    click.echo(format_error_table(table, f"errors of {gp_file} on {xyz}"))
    if with_std:
        samples = std_samples(model, frames, preds)
        stds = uncertainty_table(samples)
        click.echo(
            format_uncertainty_table(stds, f"predicted stds of {gp_file} on {xyz}")
        )
    if plot_dir:
        from gapfit.plots import write_plots

        paths = write_plots(plot_dir, samples)
        click.echo(f"wrote {', '.join(p.name for p in paths)} to {plot_dir}")
    if json_file:
        atomic_write(json_file, (json.dumps(table, indent=1) + "\n").encode())
        click.echo(f"wrote {json_file}")
    if std_json_file:
        atomic_write(std_json_file, (json.dumps(stds, indent=1) + "\n").encode())
        click.echo(f"wrote {std_json_file}")


# ------------------------------------------------------------------------------------
@main.command()
@click.argument("xyz", metavar="FILE")
@click.option(
    "--gp-file",
    required=True,
    metavar="FILE",
    help="Model file written by `gapfit fit` (or an already calibrated one: it is "
    "recalibrated from its DTC stds).",
)
@click.option(
    "--output",
    "-o",
    default=None,
    metavar="FILE",
    help="Calibrated model file (written atomically). Default: replace --gp-file.",
)
@click.option(
    "--per-config-type",
    is_flag=True,
    help=f"Also fit one calibration per config_type that has >= {MIN_VALUES} values "
    f"of a quantity in >= {MIN_CONFIGS} configurations; other config_types use the "
    "global one.",
)
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=None,
    metavar="K",
    help="FILE is the model's own training data: calibrate on its K-fold "
    "cross-validated predictions (each fold predicted by the model solved without "
    "it; same sparse set and hyperparameters) instead of a held-out set. [gapfit "
    "only]",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random split into folds (with --cv).",
)
@click.option(
    "--chunk-atoms",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Atoms per streamed chunk of the fold models' solves (with --cv; memory "
    "only).",
)
@label_key_options
@_user_errors
def calibrate(
    xyz: str,
    gp_file: str,
    output: str | None,
    per_config_type: bool,
    cv: int | None,
    seed: int,
    chunk_atoms: int,
    keys: LabelKeys,
) -> None:
    """Calibrate the predicted stds on labelled held-out FILE (or, with --cv K, on
    K-fold cross-validation of the training data FILE).

    Fits std_cal^2 = (scale std)^2 + floor^2 w + (relative value)^2 per quantity
    (energy, forces, virial; no relative term for energies) by maximum Gaussian
    likelihood of the errors on FILE, stores it in the model, and prints the
    metrics of the DTC and the calibrated stds on FILE. FILE must be
    configurations the model was not fitted on (and not the test set), or with --cv
    exactly the model's training data.
    """
    model = Model.load(gp_file)
    output = output or gp_file
    _check_writable(output, "--output")
    frames = read_frames(xyz, keys, require=())
    check_species(frames, model.species)
    if cv is None:
        click.echo(f"predicting {len(frames)} configs of {xyz} with stds ...")
        result = calibrate_model(model, frames, per_config_type)
    else:
        fitted_on = model.info.get("data", {}).get("sha256")
        if fitted_on is not None and fitted_on != summary(frames)["sha256"]:
            raise GapfitError(
                f"--cv: {xyz} is not the training data of {gp_file} (its sha256 "
                "differs from the one stored at the fit); give the file the model "
                "was fitted on (with the same label keys), or calibrate on held-out "
                "data without --cv."
            )
        click.echo(
            f"{cv}-fold cross-validation on {len(frames)} configs of {xyz}: "
            "fold models, then their held-out predictions with stds ..."
        )
        result = calibrate_cv(
            model, frames, cv, seed, per_config_type, chunk_atoms, progress=True
        )
    cal = result.model.calibration
    for q, s in result.samples["DTC"].items():
        if q not in cal.quantities:
            click.echo(
                f"note: {q} not calibrated ({len(s.error)} held-out values, fewer "
                f"than {MIN_VALUES}); its std stays the DTC one."
            )
    click.echo(describe(cal))
    click.echo(
        format_uncertainty_table(
            uncertainty_table(result.samples),
            f"before/after on {xyz}" + (f", {cv}-fold cross-validated" if cv else ""),
        )
    )
    result.model.save(output)
    click.echo(f"calibrated model written to {output}")


# ------------------------------------------------------------------------------------
@main.command()
@click.argument("structure", metavar="STRUCTURE")
@model_file_option
@click.option(
    "--unixsocket",
    default=None,
    metavar="NAME",
    help="Connect to the driver's UNIX socket NAME (i-PI: <ffsocket mode='unix'>"
    "<address>NAME</address>; ASE: SocketIOCalculator(unixsocket=NAME)).",
)
@click.option("--host", default="localhost", show_default=True, help="Driver host.")
@click.option(
    "--port", type=int, default=None, help="Driver port (default 31415, i-PI's)."
)
@click.option(
    "--std",
    is_flag=True,
    help="Also compute every std (about 20 times the mean's cost) for --log.",
)
@click.option(
    "--log",
    default=None,
    metavar="FILE",
    help="CSV of the steps served: energy (eV) and, with --std, its std and the "
    "largest force std (eV/Å).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep trying to connect to the driver.",
)
@_user_errors
def serve(
    structure: str,
    gp_file: str,
    unixsocket: str | None,
    host: str,
    port: int | None,
    std: bool,
    log: str | None,
    wait: float,
) -> None:
    """Be the force engine of an i-PI driver (i-PI, ASE's SocketIOCalculator).

    The driver sends cell and positions each step; the atomic numbers and pbc come
    from the last image of STRUCTURE, in the driver's atom order. Runs until the
    driver says exit. Example, for an i-PI input with a unix-mode ffsocket at
    address gap:

    \b
    gapfit serve init.xyz --gp-file model.npz --unixsocket gap
    """
    from gapfit.learner import read_structures
    from gapfit.serve import serve as run

    model = Model.load(gp_file)
    atoms = read_structures(structure, "STRUCTURE")[-1]
    where = f"unix socket {unixsocket}" if unixsocket else f"{host}:{port or 31415}"
    click.echo(f"serving {gp_file} for {len(atoms)} atoms on {where}", err=True)
    steps = run(model, atoms, host, port, unixsocket, std, log, wait)
    click.echo(f"the driver said exit after {steps} steps", err=True)


# ------------------------------------------------------------------------------------
@main.command()
@model_file_option
@_user_errors
def info(gp_file: str) -> None:
    """What a model file holds: species, settings, sparse set, data, errors."""
    model = Model.load(gp_file)
    meta = model.info
    click.echo(f"model: {gp_file}")
    click.echo("species: " + " ".join(_symbol(z) for z in model.species))
    for term in model.terms:
        meta_t = term.meta()
        click.echo(
            f"{term.name}: "
            + " ".join(
                f"{k}={v}" for k, v in meta_t["descriptor"].items() if k != "species"
            )
        )
        kernel = dict(meta_t["kernel"])
        per_type = term.kernel.per_type
        if per_type:  # gap_fit's theta_fac: a length (triple) per type
            lengths = kernel.pop("theta")
        click.echo("  kernel: " + " ".join(f"{k}={v}" for k, v in kernel.items()))
        if per_type:
            click.echo(
                "  lengths per type (theta_fac): "
                + ", ".join(
                    f"{name} {np.round(theta, 4).tolist()}"
                    for name, theta in zip(term.type_names(), lengths, strict=True)
                )
            )
        click.echo(
            f"  sparse points: {term.n_sparse} ("
            + ", ".join(f"{k} {v}" for k, v in term.sparse_counts().items())
            + ")"
        )
    settings = meta.get("settings", {})
    if settings:
        sig = settings.get("default_sigma")
        click.echo(
            f"default_sigma: {sig} (energy eV/atom, force eV/Å, virial eV/atom, "
            f"hessian); sigma_per_atom={settings.get('sigma_per_atom')}"
        )
        for name, values in settings.get("config_type_sigma", {}).items():
            click.echo(f"config_type_sigma: {name} {values}")
        click.echo(
            f"sparse_jitter: {settings.get('sparse_jitter')} eV², "
            f"rnd_seed: {settings.get('rnd_seed')}, "
            f"e0_method: {settings.get('e0_method')}"
        )
    click.echo(
        "e0 (eV): "
        + ", ".join(f"{_symbol(z)} {v:.6f}" for z, v in sorted(model.e0.items()))
    )
    if model.baseline is not None:
        click.echo(
            f"baseline: {model.baseline.calculator} {json.dumps(model.baseline.kwargs)}"
            " (its energy, forces and virial are added to the GP's)"
        )
    click.echo(_data_lines(meta.get("data", {})))
    versions = meta.get("versions", {})
    click.echo(
        f"gapfit {meta.get('gapfit_version', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    if "timings_s" in meta:
        click.echo(
            "fit timings: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in meta["timings_s"].items())
        )
    if "peak_rss_gib" in meta:
        click.echo(
            "fit peak RSS: "
            + ", ".join(f"{k} {v:.2f} GiB" for k, v in meta["peak_rss_gib"].items())
        )
    if "hyperparameters" in meta:
        click.echo(format_report(meta["hyperparameters"]))
    if model.calibration is not None:
        click.echo(describe(model.calibration))
    if meta.get("training_errors"):
        click.echo(format_error_table(meta["training_errors"], "training errors"))


def _resume_changes(ctx: click.Context, mode: str) -> dict[str, Any]:
    """The stops that ``--resume`` moves (``Learner.extend``): the options given on
    the command line among those the run's mode may change; any other run setting
    given is an error, never silently ignored."""
    from gapfit.learner import EXTENDABLE, MODE_NAMES

    given = {
        p.name: p.opts[0]
        for p in ctx.command.params
        if p.name
        not in (
            "workdir",
            "resume",
            "labeller",
            "quiet",
            "dask_scheduler",
            "dask_workers",
        )
        and ctx.get_parameter_source(p.name or "")
        not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    fixed = [opt for name, opt in given.items() if name not in EXTENDABLE[mode]]
    if fixed:
        movable = " and ".join(
            "--" + name.replace("_", "-") for name in EXTENDABLE[mode]
        )
        raise GapfitError(
            f"{', '.join(fixed)} with --resume: a resumed {MODE_NAMES[mode]} run "
            "keeps the settings it started with (state.json); only "
            f"{movable} may change, to go on further. Start a new --workdir to "
            "change the others."
        )
    return {name: ctx.params[name] for name in given}


# ------------------------------------------------------------------------------------
@main.command(cls=_FitCommand)
@click.option(
    "--workdir",
    required=True,
    metavar="DIR",
    help="Directory of the run: model.npz, labelled.xyz, log.jsonl, curve.csv, "
    "curve.png and the checkpoint that --resume continues from.",
)
@click.option("--pool", metavar="FILE", help="Pool mode: structures to choose from.")
@click.option(
    "--rattle",
    metavar="FILE",
    help="Pool mode on --n-rattle rattled copies of the structures in FILE.",
)
@click.option(
    "--md", metavar="FILE", help="On-the-fly mode: Langevin MD from FILE's last image."
)
@click.option(
    "--relax",
    metavar="FILE",
    help="On-the-fly mode: FIRE relaxation of FILE's last image.",
)
@click.option(
    "--labeller",
    default=None,
    metavar="NAME",
    help="ASE calculator that labels: emt, lj or module:Class "
    "(e.g. tblite.ase:TBLite). With --resume: the run's by default.",
)
@click.option(
    "--labeller-kwargs",
    default=None,
    metavar="JSON",
    help='Keyword arguments of the labeller, e.g. \'{"method": "GFN1-xTB"}\'.',
)
@click.option(
    "--test",
    default=None,
    metavar="FILE",
    help="Labelled test structures: learning curve of the test RMSEs and mean "
    "predicted stds (curve.csv, curve.png).",
)
@click.option(
    "--soap",
    multiple=True,
    metavar="SETTINGS",
    help="SOAP settings as for gapfit fit, repeated for several terms (e.g. one per "
    "element with Z=); n_sparse is the most sparse points per element (chosen by "
    "the loop).",
)
@settings_options(
    "Noise stds: energy eV/atom, force eV/Å, virial eV/atom (as for fit).",
    "average",
    "As for fit; isolated: the labeller labels isolated atoms first.",
)
@click.option("--config-type-sigma", default=None, metavar="SPEC", help="As for fit.")
@click.option("--sigma-per-atom/--no-sigma-per-atom", default=True, show_default=True)
@click.option("--sparse-jitter", type=float, default=1e-8, show_default=True)
@baseline_options
@click.option(
    "--rnd-seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the first pool structures, rattling and MD.",
)
@click.option(
    "--n-seed",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Pool: random structures labelled first, before --strategy picks the rest.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Structures labelled per pool step.",
)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=None,
    help="Most labels [pool: 40; on-the-fly: none, then the sampler goes on].",
)
@click.option(
    "--target-std",
    type=float,
    default=None,
    metavar="EV/ATOM",
    help="Pool: stop when no unlabelled structure's score per atom is above this "
    "(eV/atom): its RMS local-energy std, or with --score energy its energy std per "
    "atom.",
)
@click.option(
    "--score",
    type=click.Choice(SCORES),
    default="environments",
    show_default=True,
    help="Pool: rank structures by their summed local-energy variances "
    "(environments) or by their energy variance (energy).",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="mixed",
    show_default=True,
    help="Pool: half of each batch by the score and half at random (mixed), each "
    "pick the most uncertain of --tournament-size random structures (tournament), "
    "all by the score (uncertainty), or random batches with the same model and "
    "stops (random: the baseline of a learning curve).",
)
@click.option(
    "--tournament-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Pool, --strategy tournament: random structures drawn per pick.",
)
@click.option("--n-rattle", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--rattle-std", type=float, default=0.1, show_default=True, help="Å per component."
)
@click.option(
    "--rattle-strain", type=float, default=0.0, show_default=True, help="Strain std."
)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--temperature", type=float, default=300.0, show_default=True, help="K.")
@click.option("--timestep", type=float, default=2.0, show_default=True, help="fs.")
@click.option("--friction", type=float, default=0.01, show_default=True, help="1/fs.")
@click.option(
    "--fmax", type=float, default=0.05, show_default=True, help="--relax: eV/Å."
)
@click.option(
    "--std-threshold",
    type=float,
    default=0.1,
    show_default=True,
    help="On-the-fly: label a frame whose largest force-component std (scaled by "
    "the held-out errors of earlier labels) exceeds this, in eV/Å.",
)
@click.option(
    "--min-interval",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="On-the-fly: at least this many steps from one label to the next "
    "(consecutive MD frames are near-duplicates; FLARE's min_steps_with_model).",
)
@click.option("--sparse-per-label", type=int, default=20, show_default=True)
@click.option(
    "--sparse-tol",
    type=float,
    default=1e-6,
    show_default=True,
    help="With --sparse-force-std 0 and for the start structure on the fly: new "
    "sparse points need a local-energy Nyström residual above this x delta².",
)
@click.option(
    "--sparse-force-std",
    type=click.FloatRange(min=0.0),
    default=0.002,
    show_default=True,
    help="Pool mode: new sparse points lower the labelled structures' force "
    "residual stds to this (eV/Å); 0: by local-energy residual (--sparse-tol).",
)
@click.option(
    "--refit-every",
    type=int,
    default=20,
    show_default=True,
    help="Full refit after this many labels (else rank updates); the first come "
    "sooner, after 4, 8, 16, ... labels.",
)
@click.option(
    "--optimise-hyperparameters",
    is_flag=True,
    help="At each refit after --refit-every labels, choose each term's delta and "
    "the sigmas again by the DTC evidence on all labelled frames.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --workdir.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@dask_options
@_user_errors
def learn(**options: Any) -> None:
    """Active learning: label the structures the model is least sure about.

    \b
    gapfit learn --pool pool.xyz --labeller emt --workdir run --budget 40
    gapfit learn --md start.xyz --temperature 1200 --steps 5000 \\
      --labeller tblite.ase:TBLite --labeller-kwargs '{"method": "GFN1-xTB"}' \\
      --workdir md_run
    gapfit learn --workdir md_run --resume
    gapfit learn --workdir md_run --resume --steps 10000 --budget 60

    With --dask-workers N (or --dask-scheduler) each pool batch is labelled at
    once on the dask workers, each structure in workdir/labels/<source>.

    Labeller failures skip the structure (the reason is in log.jsonl). Every step
    is checkpointed in --workdir; --resume continues after a kill, and with
    --steps or --budget (pool mode: --budget, --target-std) goes on past the
    run's stops. Each label's
    held-out prediction is kept in labelled.xyz (gap_* fields), and model.npz
    carries the std calibration fitted to them (printed at the end).
    """
    try:
        _learn(options)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted; {options['workdir']} holds the last checkpoint: continue "
            f"with gapfit learn --workdir {options['workdir']} --resume",
            err=True,
        )
        raise click.exceptions.Exit(130) from None


def _learn(o: dict[str, Any]) -> None:
    """``gapfit learn``'s work (``learn``), given its options."""
    from gapfit.learn import (  # loads ASE dynamics only here
        learn_otf,
        learn_pool,
        read_structures,
    )
    from gapfit.samplers import rattled

    progress = not o["quiet"]

    def started(run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with _dask_client(o["dask"]) as client:  # labels on its workers
            return run(*args, client=client, **kwargs)

    if o["resume"]:
        from gapfit.workdir import Workdir

        mode = Workdir(o["workdir"]).load()[0]["settings"]["mode"]
        run = learn_pool if mode == "pool" else learn_otf
        extend = _resume_changes(click.get_current_context(), mode)
        learner = started(
            run,
            o["workdir"],
            o["labeller"],
            resume=True,
            progress=progress,
            extend=extend,
        )
        click.echo(learner.summary())
        return
    sources = [k for k in ("pool", "rattle", "md", "relax") if o[k]]
    if len(sources) != 1:
        raise GapfitError(
            "give exactly one of --pool, --rattle, --md, --relax (found "
            f"{', '.join('--' + k for k in sources) or 'none'}), or --resume."
        )
    if not o["labeller"]:
        raise GapfitError("--labeller is missing: emt, lj or module:Class.")
    gap = GAP(
        **gap_kwargs(
            soap=o["soap"],
            distance_2b=o["distance_2b"],
            angle_3b=o["angle_3b"],
            default_sigma=o["default_sigma"],
            config_type_sigma=o["config_type_sigma"],
            sigma_per_atom=o["sigma_per_atom"],
            e0=o["e0"],
            e0_method=o["e0_method"],
            sparse_jitter=o["sparse_jitter"],
            rnd_seed=o["rnd_seed"],
            keys=LabelKeys(),
        ),
        baseline=o["baseline"],
        baseline_kwargs=o["baseline_kwargs"],
        optimise_hyperparameters=o["optimise_hyperparameters"],
    )
    common = {
        "labeller_kwargs": o["labeller_kwargs"],
        "sparse_per_label": o["sparse_per_label"],
        "sparse_tol": o["sparse_tol"],
        "refit_every": o["refit_every"],
        "seed": o["rnd_seed"],
        "progress": progress,
    }
    test = o["test"]
    if o["pool"] or o["rattle"]:
        if o["rattle"]:
            pool = rattled(
                read_structures(o["rattle"], "--rattle"),
                o["n_rattle"],
                o["rattle_std"],
                o["rattle_strain"],
                o["rnd_seed"],
            )
        else:
            pool = o["pool"]
        learner = started(
            learn_pool,
            o["workdir"],
            o["labeller"],
            pool,
            gap,
            test,
            n_seed=o["n_seed"],
            batch_size=o["batch_size"],
            budget=o["budget"] or 40,
            target_std=o["target_std"],
            score=o["score"],
            strategy=o["strategy"],
            tournament_size=o["tournament_size"],
            sparse_force_std=o["sparse_force_std"] or None,
            **common,
        )
    else:
        learner = started(
            learn_otf,
            o["workdir"],
            o["labeller"],
            o["md"] or o["relax"],
            gap,
            test,
            sampler="md" if o["md"] else "relax",
            steps=o["steps"],
            temperature=o["temperature"],
            timestep=o["timestep"],
            friction=o["friction"],
            fmax=o["fmax"],
            std_threshold=o["std_threshold"],
            budget=o["budget"],
            min_interval=o["min_interval"],
            **common,
        )
    click.echo(learner.summary())
