"""gap_fit's command line (``gapfit.gap_fit_args``), the ``distance_2b`` settings
and ``gapfit fit`` in both styles: gap_fit's ``key=value`` arguments and the options.

Everything here parses only, except ``test_gap_fit_style_end_to_end``, one small fit
with a 2-body + SOAP model."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from test_cli import emt_labelled, fails_cleanly, invoke

import gapfit.cli
from gapfit.data import LabelKeys
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import (
    GapFitCommand,
    gap_kwargs,
    join_braces,
    parse_gap_fit_command,
)
from gapfit.gapstring import DISTANCE_2B_DEFAULTS, parse_distance_2b, parse_soap

# the gap_fit command of the shared cu_emt benchmark, as written there
D2B = (
    "distance_2b cutoff=5.0 cutoff_transition_width=1.0 covariance_type=ard_se "
    "delta=1.0 theta_uniform=1.0 sparse_method=uniform n_sparse=20 add_species=T"
)
SOAP = (
    "soap cutoff=5.0 cutoff_transition_width=1.0 n_max=8 l_max=6 atom_sigma=0.5 "
    "zeta=4 delta=1.0 covariance_type=dot_product sparse_method=cur_points "
    "n_sparse=500 add_species=T"
)
PEERS = f"""gap_fit at_file=train.xyz \\
  gap={{{D2B} : {SOAP}}} \\
  default_sigma={{0.001 0.05 0.05 0.0}} sparse_jitter=1.0e-8 e0_method=isolated \\
  energy_parameter_name=energy force_parameter_name=forces \\
  virial_parameter_name=virial config_type_parameter_name=config_type \\
  do_copy_at_file=F sparse_separate_file=T rnd_seed=1 gp_file=gap.xml"""
# the same settings as gapfit fit options
DASHED = [
    "--at-file",
    "train.xyz",
    "--gp-file",
    "gap.npz",
    "--distance-2b",
    D2B.removeprefix("distance_2b "),
    "--soap",
    SOAP.removeprefix("soap "),
    "--default-sigma",
    "0.001",
    "0.05",
    "0.05",
    "0.0",
    "--sparse-jitter",
    "1.0e-8",
    "--e0-method",
    "isolated",
    "--energy-parameter-name",
    "energy",
    "--force-parameter-name",
    "forces",
    "--virial-parameter-name",
    "virial",
    "--config-type-parameter-name",
    "config_type",
    "--rnd-seed",
    "1",
]


def assert_noted(cmd: GapFitCommand, *words: str) -> None:
    """Each of ``words`` is in the command's notes."""
    notes = " ".join(cmd.ignored)
    for word in words:
        assert word in notes, (word, notes)


def shell_words(command: str) -> list[str]:
    """``command``'s arguments as the shell hands them to gap_fit (POSIX rules)."""
    return shlex.split(command.replace("\\\n", " "))[1:]


def check_peers(cmd: GapFitCommand) -> None:
    assert (cmd.at_file, cmd.gp_file) == ("train.xyz", "gap.npz")
    kw = cmd.gap_kwargs
    assert kw["soap"] == parse_soap(SOAP)
    assert (kw["soap"]["n_max"], kw["soap"]["n_sparse"], kw["soap"]["zeta"]) == (
        8,
        500,
        4,
    )
    assert kw["distance_2b"] == parse_distance_2b(None)  # the recipe = defaults
    assert kw["default_sigma"] == (0.001, 0.05, 0.05, 0.0)
    assert (kw["sparse_jitter"], kw["e0_method"], kw["rnd_seed"]) == (
        1e-8,
        "isolated",
        1,
    )
    assert kw["keys"] == LabelKeys(forces="forces")
    assert (kw["e0"], kw["config_type_sigma"], kw["sigma_per_atom"]) == (
        None,
        None,
        True,
    )
    notes = " ".join(cmd.ignored)
    assert "do_copy_at_file=F ignored" in notes
    assert "sparse_separate_file=T ignored" in notes
    assert "gap.xml" in notes and "gap.npz" in notes


# ---- the benchmark's gap_fit command ------------------------------------------------
def test_peers_command_as_shell_words() -> None:
    words = shell_words(PEERS)
    assert "gap={distance_2b" in words and ":" in words  # split inside the braces
    check_peers(parse_gap_fit_command(words))


def test_peers_command_as_one_string() -> None:
    check_peers(parse_gap_fit_command(PEERS))  # "gap_fit" and "\<newline>" skipped


def test_peers_command_with_quoted_values() -> None:
    quoted = PEERS
    for value in (f"gap={{{D2B} : {SOAP}}}", "default_sigma={0.001 0.05 0.05 0.0}"):
        quoted = quoted.replace(value, shlex.quote(value))
    words = shell_words(quoted)
    assert f"gap={{{D2B} : {SOAP}}}" in words
    check_peers(parse_gap_fit_command(words))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_peers_command_split_by_bash() -> None:
    """The words bash really passes (brace and line-continuation rules included)."""
    echo = (
        shlex.quote(sys.executable)
        + " -c "
        + shlex.quote("import json, sys; print(json.dumps(sys.argv[1:]))")
    )
    command = PEERS.replace("gap_fit ", echo + " ", 1)
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, check=True
    ).stdout
    check_peers(parse_gap_fit_command(json.loads(out)))


def test_join_braces() -> None:
    words = ["gap={soap", "cutoff=5", "zeta=2}", "default_sigma={0.1", "0.2", "0.3}"]
    assert join_braces(words) == [
        "gap={soap cutoff=5 zeta=2}",
        "default_sigma={0.1 0.2 0.3}",
    ]
    assert join_braces(["e0={Cu:", "-0.1}", "x=1"]) == ["e0={Cu: -0.1}", "x=1"]


def test_gap_string_separators_and_order() -> None:
    a = parse_gap_fit_command(["at_file=t.xyz", f"gap={{{SOAP} ; {D2B}}}"])
    b = parse_gap_fit_command(["at_file=t.xyz", f"gap={{{D2B}:{SOAP}}}"])
    assert a.gap_kwargs == b.gap_kwargs


# ---- the two styles give one estimator -----------------------------------------------
def test_styles_give_identical_gap_kwargs() -> None:
    from_gap_fit = parse_gap_fit_command(shell_words(PEERS)).gap_kwargs
    from_options = gap_kwargs(
        soap=SOAP.removeprefix("soap "),
        distance_2b=D2B.removeprefix("distance_2b "),
        default_sigma="0.001 0.05 0.05 0.0",
        config_type_sigma=None,
        sigma_per_atom=True,
        e0=None,
        e0_method="isolated",
        sparse_jitter=1e-8,
        rnd_seed=1,
        keys=LabelKeys(),
    )
    assert from_gap_fit == from_options


class RecordingGAP:
    """Stands in for GAP in the CLI: records the arguments, then stops the command."""

    calls: list[tuple[dict, str]] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def fit(self, at_file: str, client: object = None) -> None:
        RecordingGAP.calls.append((self.kwargs, at_file))
        raise GapfitError("stopped by the test before reading data")


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list:
    monkeypatch.setattr(gapfit.cli, "GAP", RecordingGAP)
    monkeypatch.chdir(tmp_path)
    RecordingGAP.calls = []
    return RecordingGAP.calls


def test_cli_styles_build_the_same_gap(recorded: list) -> None:
    gap_fit_style = invoke("fit", *shell_words(PEERS), "--chunk-atoms", "64")
    fails_cleanly(gap_fit_style, "stopped by the test")
    for word in ("note: do_copy_at_file=F ignored", "writing gap.npz"):
        assert word in gap_fit_style.stdout
    fails_cleanly(invoke("fit", *DASHED, "--chunk-atoms", "64"), "stopped by the test")
    (kw_a, file_a), (kw_b, file_b) = recorded
    assert kw_a == kw_b and file_a == file_b == "train.xyz"
    assert kw_a["chunk_atoms"] == 64 and kw_a["progress"] is True
    assert kw_a["distance_2b"]["theta_uniform"] == 1.0
    assert kw_a["soap"]["n_sparse"] == 500


def test_cli_distance_2b_without_soap_has_no_soap_term(recorded: list) -> None:
    base = ["fit", "--at-file", "t.xyz", "--gp-file", "m.npz"]
    fails_cleanly(invoke(*base, "--distance-2b", "cutoff=4.0"), "stopped")
    fails_cleanly(invoke(*base), "stopped")
    (with_2b, _), (plain, _) = recorded
    assert with_2b["soap"] is None
    assert with_2b["distance_2b"] == parse_distance_2b("cutoff=4.0")
    assert plain["soap"] == parse_soap(None) and plain["distance_2b"] is None


def test_cli_refuses_mixed_styles(recorded: list) -> None:
    result = invoke("fit", "at_file=t.xyz", "gap={soap}", "--e0-method", "average")
    fails_cleanly(result, "--e0-method", "one style")
    result = invoke("fit", "at_file=t.xyz", "gap={soap}", "--gp-file", "m.npz")
    fails_cleanly(result, "--gp-file", "one style")
    assert not recorded


def test_cli_joins_unquoted_descriptor_settings(recorded: list) -> None:
    """``--soap cutoff=5.0 n_max=4`` as the shell splits it unquoted: the words
    after the option's value that are descriptor settings belong to it."""
    base = ["fit", "--at-file", "t.xyz", "--gp-file", "m.npz"]
    soap, two = "cutoff=4.0 n_max=4 l_max=3", "cutoff=4.0 delta=0.5"
    quoted = invoke(*base, "--distance-2b", two, "--soap", soap, "--rnd-seed", "3")
    split = invoke(
        *base, "--distance-2b", *two.split(), f"--soap={soap.split()[0]}",
        *soap.split()[1:], "--rnd-seed", "3",
    )  # fmt: skip
    for result in (quoted, split):
        fails_cleanly(result, "stopped by the test")
    (kw_a, _), (kw_b, _) = recorded
    assert kw_a == kw_b and kw_b["soap"]["n_max"] == 4 and kw_b["rnd_seed"] == 3
    assert kw_b["distance_2b"]["delta"] == 0.5


def test_cli_stray_argument(recorded: list) -> None:
    result = invoke("fit", "train.xyz", "--soap", "n_max=4")
    fails_cleanly(result, "unexpected argument 'train.xyz'", "key=value")


def test_cli_needs_at_file(recorded: list) -> None:
    fails_cleanly(invoke("fit", "--gp-file", "m.npz"), "--at-file", "at_file=")


def test_cli_negative_number_inside_braces(recorded: list) -> None:
    result = invoke("fit", "at_file=t.xyz", "gap={soap}", "e0={Cu:", "-0.1}")
    fails_cleanly(result, "stopped")
    assert recorded[0][0]["e0"] == {29: -0.1}


def test_fit_help_maps_gap_fit_keys() -> None:
    result = invoke("fit", "--help")
    assert result.exit_code == 0
    out = " ".join(result.output.split())
    for text in (
        "[GAP_FIT_ARGS]",
        "default_sigma --default-sigma default_sigma=",
        "gap={distance_2b ...} --distance-2b distance_2b=",
        "energy_parameter_name --energy-parameter-name keys.energy",
        "sparse_separate_file",
        "NAME.xml writes NAME.npz",
        "theta_uniform=1.0",
        "no SOAP term",
    ):
        assert text in out, text


# ---- errors ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,words",
    [
        (["at_flie=t.xyz", "gap={soap}"], ["'at_flie'", "Did you mean 'at_file'?"]),
        (["at_file=t.xyz", "gap={soap", "n_maxx=4}"], ["n_maxx", "'n_max'?"]),
        (
            ["at_file=t.xyz", "gap={distance_2b", "theta_unifrom=0.5}"],
            ["theta_unifrom", "'theta_uniform'?"],
        ),
        (["at_file=t.xyz", "gap={soap}", "verbosty=NERD"], ["'verbosity'?"]),
    ],
)
def test_misspelt_keys_suggest_the_right_one(args, words) -> None:
    with pytest.raises(GapfitError) as err:
        parse_gap_fit_command(args)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "key",
    [
        "sparse_use_actual_gpcov=T",
        "hessian_parameter_name=hessian",  # looks like stress_parameter_name
        "template_file=t.xyz",
        "condition_number_norm=I",
        "mpi_blocksize=100",
        "parameter_name_prefix=dft_",
        "no_such_thing=1",
    ],
)
def test_unsupported_keys_fail_clearly(key: str) -> None:
    with pytest.raises(GapfitError) as err:
        parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", key])
    message = str(err.value)
    name = key.split("=")[0]
    assert f"gap_fit option '{name}' is not supported by gapfit" in message
    assert "gapfit fit --help" in message and "Did you mean" not in message


@pytest.mark.parametrize(
    "gap,words",
    [
        (
            "gap={distance_3b cutoff=3.0}",
            ["'distance_3b' is not supported", "angle_3b"],
        ),
        ("gap={angle_3b theta_fac=0.5 theta_uniform=1.0}", ["give one"]),
        ("gap={angle_3b sparse_method=cur_points}", ["uniform", "random"]),
        ("gap={sopa cutoff=3.0}", ["'soap'?"]),
        ("gap={angle_3b : angle_3b}", ["2 angle_3b terms", "give one"]),
        ("gap={soap :: distance_2b}", ["empty descriptor"]),
        ("gap={cutoff=3.0}", ["does not start with its type"]),
        ("gap={distance_2b sparse_method=cur_points}", ["uniform, random"]),
        ("gap={distance_2b covariance_type=dot_product}", ["ard_se"]),
        ("gap={soap covariance_type=ard_se}", ["dot_product"]),
        ("gap={soap add_species=T Z=29}", ["add_species=F"]),
        ("gap={soap central_weight=0.5}", ["central_weight=1.0"]),
        ("gap={distance_2b f0=1.0}", ["f0=0.0", "prior mean"]),
    ],
)
def test_bad_gap_strings(gap: str, words: list[str]) -> None:
    with pytest.raises(GapfitError) as err:
        parse_gap_fit_command(["at_file=t.xyz", *gap.split()])
    for word in words:
        assert word in str(err.value)


def test_descriptor_setting_outside_the_braces() -> None:
    with pytest.raises(GapfitError, match="descriptor setting"):
        parse_gap_fit_command(["at_file=t.xyz", "gap=soap", "n_max=4"])


@pytest.mark.parametrize(
    "args,word",
    [
        (["at_file=t.xyz", "gap={soap", "n_max=4"], "never closed"),
        (["at_file=t.xyz", "gap=soap", "n_max=4}"], "closes nothing"),
        (["at_file=t.xyz", "gap={soap}", "default_sigma={0.1", "0.1", "0.1"], "'{'"),
    ],
)
def test_unbalanced_braces(args: list[str], word: str) -> None:
    with pytest.raises(GapfitError, match="unbalanced braces") as err:
        parse_gap_fit_command(args)
    assert word in str(err.value)


def test_unbalanced_braces_on_the_command_line(recorded: list) -> None:
    result = invoke("fit", "at_file=t.xyz", "gap={soap", "n_max=4", "--quiet")
    fails_cleanly(result, "unbalanced braces")


def test_missing_and_repeated_keys() -> None:
    with pytest.raises(GapfitError, match="at_file= is missing"):
        parse_gap_fit_command(["gap={soap}"])
    with pytest.raises(GapfitError, match="gap= is missing"):
        parse_gap_fit_command(["at_file=t.xyz"])
    with pytest.raises(GapfitError, match="'at_file' / 'atoms_filename'.*twice"):
        parse_gap_fit_command(["at_file=a.xyz", "atoms_filename=b.xyz", "gap={soap}"])
    with pytest.raises(GapfitError, match="unexpected argument .train.xyz.: "):
        parse_gap_fit_command(["train.xyz", "gap={soap}"])


# ---- values ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "words,expected",
    [
        (["default_sigma={0.002", "0.1", "0.2}"], (0.002, 0.1, 0.2)),
        (["default_sigma={0.002", "0.1", "0.2", "1.0}"], (0.002, 0.1, 0.2, 1.0)),
        (["default_sigma={0.002,0.1,0.2,1.0}"], (0.002, 0.1, 0.2, 1.0)),
        (["default_kernel_regularisation={0.002 0.1 0.2}"], (0.002, 0.1, 0.2)),
        ([], (0.001, 0.05, 0.05, 0.0)),
    ],
)
def test_default_sigma_3_or_4_values(words: list[str], expected: tuple) -> None:
    cmd = parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", *words])
    assert cmd.gap_kwargs["default_sigma"] == expected


@pytest.mark.parametrize(
    "value,word",
    [("{0.001 0.05}", "3 or 4 numbers"), ("{0 0.05 0.05}", "energy sigma")],
)
def test_bad_default_sigma(value: str, word: str) -> None:
    with pytest.raises(GapfitError, match=word) as err:
        parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", f"default_sigma={value}"])
    assert "default_sigma=" in str(err.value)


@pytest.mark.parametrize(
    "gp_file,written,note",
    [
        ("gap.xml", "gap.npz", "not GAP XML"),
        ("out/Model.XML", "out/Model.npz", "not GAP XML"),
        ("model.npz", "model.npz", None),
        (None, "gap_new.npz", "gap_fit's default gap_new.xml"),
    ],
)
def test_gp_file_xml_becomes_npz(gp_file, written: str, note) -> None:
    extra = [f"gp_file={gp_file}"] if gp_file else []
    soap = "gap={soap cutoff_transition_width=0.5 sparse_method=random}"
    cmd = parse_gap_fit_command(["at_file=t.xyz", soap, *extra])
    assert cmd.gp_file == written
    notes = " ".join(cmd.ignored)
    assert (note in notes) if note else not notes


def test_gap_fit_lines_take_gap_fits_defaults_where_gapfits_differ() -> None:
    """A gap_fit line that leaves out a SOAP or distance_2b transition width or the
    SOAP, distance_2b or angle_3b sparse method gets gap_fit's defaults (0.5 Å,
    random), and says so; the same settings written out give the same terms, and
    gapfit's own options keep their defaults (1.0 Å, CUR points, uniform)."""
    line = (
        "gap={distance_2b cutoff=4.0 : angle_3b cutoff=3.0 : soap cutoff=4.0 n_max=4 "
        "l_max=3 zeta=4}"
    )
    cmd = parse_gap_fit_command(["at_file=t.xyz", line])
    soap, pair = cmd.gap_kwargs["soap"], cmd.gap_kwargs["distance_2b"]
    assert (soap["cutoff_transition_width"], soap["sparse_method"]) == (0.5, "random")
    assert (pair["cutoff_transition_width"], pair["sparse_method"]) == (0.5, "random")
    assert cmd.gap_kwargs["angle_3b"]["sparse_method"] == "random"
    assert_noted(
        cmd,
        "soap cutoff_transition_width=0.5",
        "soap sparse_method=random",
        "distance_2b cutoff_transition_width=0.5",
        "distance_2b sparse_method=random",
        "angle_3b sparse_method=random",
    )
    full = (
        "gap={distance_2b cutoff=4.0 cutoff_transition_width=0.5 "
        "sparse_method=random : angle_3b cutoff=3.0 sparse_method=random : soap "
        "cutoff=4.0 n_max=4 l_max=3 zeta=4 cutoff_transition_width=0.5 "
        "sparse_method=random}"
    )
    same = parse_gap_fit_command(["at_file=t.xyz", full])
    assert same.gap_kwargs == cmd.gap_kwargs
    assert "defaults for settings" not in " ".join(same.ignored)
    assert parse_soap("cutoff=4.0")["cutoff_transition_width"] == 1.0
    assert parse_soap("cutoff=4.0")["sparse_method"] == "cur_points"
    assert parse_distance_2b("cutoff=4.0")["sparse_method"] == "uniform"


@pytest.mark.parametrize(
    "value,expected",
    [
        ("{Cu:-0.1:Au:-0.2}", {29: -0.1, 79: -0.2}),
        ("Cu:-0.1:Au:-0.2", {29: -0.1, 79: -0.2}),
        ("Cu:-3.5", {29: -3.5}),
    ],
)
def test_e0_per_element(value: str, expected: dict) -> None:
    cmd = parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", f"e0={value}"])
    assert cmd.gap_kwargs["e0"] == expected


@pytest.mark.parametrize("value", ["-0.1", "{-0.1}", "0"])
def test_e0_one_number_for_all_elements_is_refused(value: str) -> None:
    with pytest.raises(GapfitError) as err:
        parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", f"e0={value}"])
    assert "e0_method=average" in str(err.value)
    assert "e0={Cu:-0.1:Au:-0.2}" in str(err.value)


def test_e0_bad_symbol() -> None:
    with pytest.raises(GapfitError, match="Xq"):
        parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", "e0={Xq:-0.1}"])


def test_other_values_and_aliases() -> None:
    cmd = parse_gap_fit_command(
        [
            "atoms_filename=a.xyz",
            "gap_file=m.npz",
            "gap={distance_2b",
            "cutoff=4.0",
            "cutoff_transition_width=0.5",
            "sparse_method=uniform}",
            "config_type_kernel_regularisation={bulk:0.002:0.1:0.2:0.0}",
            "kernel_regularisation_is_per_atom=F",
            "e0_method=average",
            "sparse_jitter=1e-6",
            "rnd_seed=7",
            "energy_parameter_name=dft_energy",
            "force_parameter_name=dft_forces",
            "stress_parameter_name=dft_stress",
            "verbosity=NERD",
        ]
    )
    kw = cmd.gap_kwargs
    assert (cmd.at_file, cmd.gp_file) == ("a.xyz", "m.npz")
    assert kw["soap"] is None and kw["distance_2b"]["cutoff"] == 4.0
    assert kw["config_type_sigma"] == {"bulk": (0.002, 0.1, 0.2)}
    assert kw["sigma_per_atom"] is False
    assert (kw["e0_method"], kw["sparse_jitter"], kw["rnd_seed"]) == (
        "average",
        1e-6,
        7,
    )
    assert kw["keys"] == LabelKeys(
        energy="dft_energy", forces="dft_forces", stress="dft_stress"
    )
    assert cmd.ignored == (
        "verbosity=NERD ignored: gapfit prints a summary and progress bars "
        "(--quiet hides them).",
    )
    GAP(**kw)  # every key is a GAP argument


@pytest.mark.parametrize(
    "arg,word",
    [
        ("rnd_seed=-1", "always seeded"),
        ("rnd_seed=1.5", "not an integer"),
        ("sparse_jitter=abc", "not a number"),
        ("sparse_jitter=-1e-8", ">= 0"),
        ("sigma_per_atom=maybe", "T or F"),
        ("e0_method=fancy", "least_squares"),
    ],
)
def test_bad_values(arg: str, word: str) -> None:
    with pytest.raises(GapfitError, match=word):
        parse_gap_fit_command(["at_file=t.xyz", "gap={soap}", arg])


# ---- descriptor strings ----------------------------------------------------------
def test_parse_distance_2b() -> None:
    defaults = {
        **DISTANCE_2B_DEFAULTS,
        "cutoff_transition_width": 1.0,
        "theta_uniform": 1.0,
    }
    assert parse_distance_2b(None) == defaults
    assert parse_distance_2b("") == defaults
    s = parse_distance_2b(D2B.replace("n_sparse=20", "n_sparse=12"))
    assert (s["n_sparse"], s["theta_uniform"], s["add_species"]) == (12, 1.0, True)
    # gap_fit's other spellings; mapping input; re-parsing is a no-op
    alt = parse_distance_2b(
        "covariance_type=gaussian energy_scale=0.5 lengthscale_uniform=0.7"
    )
    assert (alt["covariance_type"], alt["delta"], alt["theta_uniform"]) == (
        "ard_se",
        0.5,
        0.7,
    )
    assert parse_distance_2b({"delta": 0.5, "theta_uniform": "0.7"}) == alt
    assert parse_distance_2b(alt) == alt


@pytest.mark.parametrize(
    "text,word",
    [
        ("theta_unifrom=1.0", "Did you mean 'theta_uniform'"),
        ("cutoff 5", "no '='"),
        ("n_sparse=2.5", "integer"),
        ("theta_uniform=0", "> 0"),
        ("delta=-1", "> 0"),
        ("cutoff=3.0 cutoff_transition_width=4.0", "(0, cutoff]"),
        ("cutoff=nan", "number"),
        ("Z1=29 Z2=79", "add_species=F"),
        ("sparse_method=cur_points", "uniform"),
        ("theta_uniform=1.0 theta_fac=0.5", "give one"),
        ("theta_fac=0", "> 0"),
        ("delta=1 energy_scale=2", "twice"),
        ("soap n_max=4", "soap descriptor"),
    ],
)
def test_bad_distance_2b(text: str, word: str) -> None:
    with pytest.raises(GapfitError) as err:
        parse_distance_2b(text)
    assert word in str(err.value)


def test_soap_accepts_gap_fit_values() -> None:
    # keys and values are case-insensitive, as in gap_fit
    assert parse_soap(SOAP.upper()) == parse_soap(SOAP)
    assert parse_soap("soap_exponent=2 sparse_method=CUR_POINTS")["zeta"] == 2
    assert parse_soap(parse_soap("n_max=4")) == parse_soap("n_max=4")
    with pytest.raises(GapfitError, match="Did you mean 'cur_points'"):
        parse_soap("sparse_method=cur_point")
    with pytest.raises(GapfitError, match="distance_2b descriptor"):
        parse_soap(D2B)


# ---- end to end: the merge check of GAP(distance_2b=...) -----------------------------
def test_gap_fit_style_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(4):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(emt_labelled(atoms, "bulk"))
    frames.append(
        emt_labelled(
            Atoms("Cu", positions=[[5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=True),
            "isolated_atom",
        )
    )
    ase.io.write(tmp_path / "train.xyz", frames)
    command = (
        f"at_file={tmp_path / 'train.xyz'} "
        "gap={distance_2b cutoff=4.0 covariance_type=ard_se delta=0.5 "
        "theta_uniform=0.5 sparse_method=uniform n_sparse=6 add_species=T : "
        "soap cutoff=4.0 n_max=3 l_max=2 atom_sigma=0.5 zeta=2 delta=0.2 "
        "n_sparse=8 sparse_method=cur_points} "
        "default_sigma={0.002 0.1 0.1 0.0} e0_method=isolated rnd_seed=3 "
        f"do_copy_at_file=F gp_file={tmp_path / 'gap.xml'}"
    )
    result = invoke("fit", *shlex.split(command), "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "note: do_copy_at_file=F ignored" in result.stdout
    assert (tmp_path / "gap.npz").is_file() and not (tmp_path / "gap.xml").exists()
    info = invoke("info", "--gp-file", tmp_path / "gap.npz")
    assert info.exit_code == 0, (info.output, info.exception)
    assert "0.002" in info.stdout


def test_config_type_n_sparse_end_to_end(tmp_path: Path) -> None:
    """gap_fit's config_type_n_sparse: the sparse points are those a fit of the
    named config_type alone chooses with that n_sparse; the dry run predicts them."""
    from emt_cells import cu_cells

    bulk_cells = cu_cells(3, seed=1, rattle=0.05)
    hot = cu_cells(3, seed=2, rattle=0.25)
    for atoms, kind in [(a, "bulk") for a in bulk_cells] + [(a, "hot") for a in hot]:
        atoms.info["config_type"] = kind
    path = tmp_path / "train.xyz"
    ase.io.write(path, bulk_cells + hot)
    soap = "soap cutoff=4.0 n_max=3 l_max=2 config_type_n_sparse={bulk:6}"
    command = parse_gap_fit_command(
        [f"at_file={path}", f"gap={{{soap}}}", "e0_method=average"]
    )
    gap = GAP(**command.gap_kwargs)
    assert gap.plan(path).n_sparse == {"soap": 6}
    model = gap.fit(path).model_
    only = GAP(  # the settings gap_fit's defaults gave the line
        soap="cutoff=4.0 n_max=3 l_max=2 n_sparse=6 cutoff_transition_width=0.5 "
        "sparse_method=random",
        e0_method="average",
    )
    ref = only.fit(ase.io.read(path, ":3")).model_  # the bulk cells as written
    np.testing.assert_array_equal(
        model.term("soap").sparse_X, ref.term("soap").sparse_X
    )
    misspelt = GAP(soap="cutoff=4.0 config_type_n_sparse=bluk:6", e0_method="average")
    with pytest.raises(GapfitError, match="config_type 'bluk'.*found: bulk, hot"):
        misspelt.plan(path)  # the dry run checks it too
    with pytest.raises(GapfitError, match="config_type 'bluk'.*found: bulk, hot"):
        GAP(soap="cutoff=4.0 config_type_n_sparse=bluk:6", e0_method="average").fit(
            path
        )


def test_a_published_distance_nb_line_with_gap_fits_run_options_parses() -> None:
    """A published 2-body + SOAP gap_fit line (distance_Nb order=2, run options
    openmp_chunk_size and e0_offset=0.0) parses: the run options are noted, an e0
    offset other than 0 is refused with what to write instead."""
    line = (
        "at_file=train.xyz gap={distance_Nb order=2 cutoff=5.0 covariance_type=ARD_SE "
        "theta_uniform=2.0 n_sparse=15 delta=2.0 sparse_method=uniform "
        "compact_clusters=T : soap l_max=6 n_max=12 atom_sigma=0.5 zeta=4 cutoff=5.0 "
        "cutoff_transition_width=1.0 central_weight=1.0 n_sparse=5000 delta=0.155 "
        "f0=0.0 covariance_type=dot_product sparse_method=CUR_POINTS} "
        "default_sigma={0.002 0.2 0.2 0.0} energy_parameter_name=REF_energy "
        "force_parameter_name=REF_forces virial_parameter_name=REF_virial "
        "sparse_jitter=1e-08 do_copy_at_file=F openmp_chunk_size=10000 "
        "do_ip_timing=F gp_file=gap_file.xml e0_offset=0.0"
    )
    cmd = parse_gap_fit_command(line)
    pair = cmd.gap_kwargs["distance_2b"]
    assert (pair["order"], pair["cutoff_transition_width"], pair["delta"]) == (
        2,
        0.5,
        2.0,
    )
    assert_noted(cmd, "openmp_chunk_size=10000 ignored", "do_ip_timing=F ignored")
    assert_noted(cmd, "e0_offset=0.0 changes nothing")
    with pytest.raises(GapfitError, match=r"e0_offset=0.1.*e0=\{Cu"):
        parse_gap_fit_command(line.replace("e0_offset=0.0", "e0_offset=0.1"))
