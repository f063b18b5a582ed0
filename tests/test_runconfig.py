"""Config files (``--config run.toml``) and replaying a run (``dealrec config-from-run``), dealrec.runconfig.

- a file sets options by flag name (dashes or underscores), the command line wins, a command reads the
  top level and its own table and skips the other commands' tables;
- an unknown key, an argument, a wrong type, a value out of range, bad TOML: one line naming the file
  and the key, exit 2, nothing run;
- a run records its options in its manifest; the config written from them reproduces the coreset;
- the TOML written reads back as the values recorded.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.manifest import RunManifest
from dealrec.methods import REGISTRY
from dealrec import runconfig
from dealrec.runconfig import CONFIG_COMMANDS, config_from_run, option_flags, read_config, toml_value
from dealrec_core.errors import DealrecError
from test_prune import write_release

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _command(name: str) -> click.Command:
    return main.get_command(click.Context(main), name)


def _params(name: str, argv: list[str]) -> dict:
    command = _command(name)
    return command.make_context(name, argv).params


REQUIRED = {"score": ["DATA", "--surrogate", "S", "--out", "O"], "select": ["RUN"], "prune": ["DATA", "--out", "O"],
            "compare": ["DATA", "--out", "O"]}


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_every_config_command_takes_the_file_and_the_command_line_wins(name, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("seed = 7\nhard_prune = 0.25\n" if name in ("select", "prune") else "seed = 7\n")
    if name == "compare":
        config.write_text("seeds = '4,5'\nhard-prune = 0.25\nscore_args = \"--hvp exact\"\n")
    params = _params(name, [*REQUIRED[name], "--config", str(config)])
    if name == "compare":
        assert (params["seeds"], params["hard_prune"], params["score_args"]) == ("4,5", 0.25, "--hvp exact")
        assert _params(name, [*REQUIRED[name], "--config", str(config), "--seeds", "1"])["seeds"] == "1"
        return
    assert params["seed"] == 7
    assert _params(name, [*REQUIRED[name], "--seed", "2", "--config", str(config)])["seed"] == 2   # order is no matter
    if name != "score":
        assert params["hard_prune"] == 0.25


def test_tables_the_top_level_and_every_type(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('n = 5\nk = 3\nlambda = 1\nquiet = true\nworker-nice = 4\nllm = "models/x"\n'
                      '[prune]\nk = 9\nsurrogate_epochs = 2\n'
                      '[select]\nk = 11\nbogus = "another command\'s table is not read"\n')
    values = read_config(config, _command("prune"))
    assert values == {"n": 5, "k": 9, "lam": 1.0, "quiet": True, "worker_nice": 4, "llm": "models/x",
                      "surrogate_epochs": 2}
    assert isinstance(values["lam"], float)
    params = _params("prune", ["D", "--out", "O", "--config", str(config), "--k", "2"])
    assert (params["n"], params["k"], params["lam"], params["surrogate_epochs"], params["hvp"]) == (5, 2, 1.0, 2, "cg")
    # select reads the same file's top level too: there, --quiet (prune's) is unknown
    with pytest.raises(DealrecError, match=r"field 'quiet': 'dealrec select' has no option --quiet"):
        read_config(config, _command("select"))
    config.write_text('n = 5\n[prune]\nquiet = true\n[select]\nk = 11\nbogus = 1\n')
    with pytest.raises(DealrecError, match=r"field 'select.bogus': 'dealrec select' has no option --bogus"):
        read_config(config, _command("select"))


BAD = [
    ('n = "12"\n', "field 'n': expected an integer, got a string ('12')"),
    ("n = 12.5\n", "field 'n': expected an integer, got a number (12.5)"),
    ("n = true\n", "field 'n': expected an integer, got a boolean (True)"),
    ('lambda = "0.3"\n', "field 'lambda': expected a number, got a string ('0.3')"),
    ("quiet = 1\n", "field 'quiet': expected true or false, got an integer (1)"),
    ('hvp = ["cg"]\n', "field 'hvp': expected a string, got an array"),
    ('hvp = "newton"\n', "field 'hvp': 'newton' is not one of 'lissa', 'cg', 'exact'"),
    ("worker_nice = 20\n", "field 'worker_nice': 20 is not in the range 0<=x<=19"),
    ("seed = -3\n", "field 'seed': seed -3 is out of range 0..4294967295"),
    ("surrogate-epoch = 3\n", "field 'surrogate-epoch': 'dealrec prune' has no option --surrogate-epoch; "
                              "did you mean 'surrogate-epochs'?"),
    ('data = "games"\n', "field 'data': DATA is an argument of 'dealrec prune': give it on the command line"),
    ('config = "other.toml"\n', "field 'config': 'dealrec prune' has no option --config"),
    ("[prunes]\nn = 3\n", "field 'prunes': unknown table"),
    ("hard-prune = 0.2\nhard_prune = 0.3\n", "field 'hard_prune': given twice (also as 'hard-prune')"),
    ("n = \n", "run.toml: not valid TOML: Invalid value (at line 1, column 5)"),
]


@pytest.mark.parametrize("text, says", BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_a_bad_config_is_one_line_naming_the_file_and_the_key(tmp_path, text, says):
    config = tmp_path / "run.toml"
    config.write_text(text)
    raw = write_release(tmp_path / "raw")
    res = CliRunner().invoke(main, ["prune", str(raw), "--out", str(tmp_path / "run"), "--config", str(config)])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith(f"error: {config}"), res.output
    assert says in res.output
    assert not (tmp_path / "run").exists()


def test_toml_values_read_back_as_written():
    values = ["plain", 'quote " and \\ backslash', "new\nline\ttab", "del\x7f bell\x07 esc\x1b", "é 😀 \u2028 end",
              "", 0, -12, 2**40, True, False, 0.3, 1e-05, 1e16, -0.0, float("inf"), float("-inf"),
              ["a", "b"], [1, 2.5], []]
    for v in values:
        back = tomllib.loads(f"x = {toml_value(v)}\n")["x"]
        assert back == v and type(back) is type(v), (v, back)
    assert math.isnan(tomllib.loads(f"x = {toml_value(float('nan'))}\n")["x"])
    with pytest.raises(DealrecError):
        toml_value({"a": 1})


# ----------------------------------------------------------------------------- replaying a run

PRUNE = ["--n", "12", "--target", "none", "--workers", "0", "--surrogate-epochs", "1", "--hvp", "cg",
         "--damping", "0.05", "--lissa-scale", "10", "--hessian-samples", "32", "--hvp-batch", "16", "--batch-size", "16", "--effort-batch-size", "16",
         "--shard-size", "32", "--k", "4",
         "--hard-prune", "0.2", "--seed", "3", "--quiet"]


def _run(*args) -> None:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def _coreset(run: Path) -> list[int]:
    return pq.read_table(run / "coreset.parquet").column("sample_id").to_pylist()


def test_a_run_replayed_from_its_config_makes_the_same_coreset(tmp_path):
    raw = write_release(tmp_path / "raw")
    first = tmp_path / "first"
    _run("prune", raw, "--out", first, *PRUNE)
    recorded = RunManifest.read(first).data["options"]["prune"]
    assert set(recorded) == set(option_flags(_command("prune"))) - {"out"}
    assert (recorded["n"], recorded["seed"], recorded["hard-prune"], recorded["surrogate"]) == (12, 3, 0.2, None)

    text = _run("config-from-run", first)
    assert text == config_from_run(first)
    assert "[prune]\nn = 12\n" in text and "# surrogate: not set\n" in text and "hard-prune = 0.2\n" in text
    config = tmp_path / "run.toml"
    config.write_text(text)
    again = tmp_path / "again"
    _run("prune", raw, "--out", again, "--config", config)
    assert _coreset(again) == _coreset(first)
    # the same options, except that the selection options the first run left unset now name the values its
    # selection used (they are the ones that the defaults may change)
    first_options = RunManifest.read(first).data["options"]["prune"]
    assert first_options["lambda"] is None and first_options["allocation"] is None
    assert RunManifest.read(again).data["options"] == {
        "prune": {**first_options, "lambda": 0.0, "allocation": REGISTRY["dealrec"].allocation}}
    # the options did the work: the same config with another seed (the command line wins; the surrogate
    # given, to save training one) picks other samples
    other = tmp_path / "other"
    _run("prune", raw, "--out", other, "--config", config, "--seed", "4", "--surrogate", first / "surrogate")
    assert RunManifest.read(other).data["options"]["prune"]["seed"] == 4
    assert _coreset(other) != _coreset(first)


def test_config_from_run_writes_a_table_per_command_and_refuses_a_run_without_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"command": "dealrec score", "options": {
        "score": {"hvp": "cg", "workers": None, "seed": 1},
        "select": {"n": 10, "method": "influence", "data": None}}}))
    text = config_from_run(run)
    doc = tomllib.loads(text)
    # a record from before --influence-v (--allocation) replays with the influence it was scored with (the
    # budgets it was selected with), not today's default
    assert doc == {"score": {"hvp": "cg", "seed": 1, "influence-v": "measured"},
                   "select": {"n": 10, "method": "influence", "allocation": "equal"}}
    assert tomllib.loads(config_from_run(run, "select")) == {"select": {"n": 10, "method": "influence",
                                                                        "allocation": "equal"}}
    config = tmp_path / "run.toml"
    config.write_text(text)   # select reads its table and skips score's
    assert read_config(config, _command("select")) == {"n": 10, "method": "influence", "allocation": "equal"}
    assert read_config(config, _command("score")) == {"hvp": "cg", "seed": 1, "influence_v": "measured"}
    (run / "manifest.json").write_text(json.dumps({"command": "dealrec score", "options": {
        "score": {"influence-v": "stationary", "seed": 1}}}))
    assert tomllib.loads(config_from_run(run)) == {"score": {"influence-v": "stationary", "seed": 1}}
    (run / "manifest.json").write_text(json.dumps({"command": "dealrec score", "options": {
        "score": {"hvp": "cg", "workers": None, "seed": 1},
        "select": {"n": 10, "method": "influence", "data": None}}}))
    with pytest.raises(DealrecError, match="records no options of 'dealrec prune'"):
        config_from_run(run, "prune")
    (run / "manifest.json").write_text(json.dumps({"command": "dealrec score"}))
    res = CliRunner().invoke(main, ["config-from-run", str(run)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "records no options" in res.output
    res = CliRunner().invoke(main, ["config-from-run", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_a_prune_records_selection_options_it_left_unset_as_the_values_its_selection_used(tmp_path):
    """prune's --lambda/--k/--hard-prune default to "not set" and take the selection's defaults, which change
    (lambda 0.3 until 2026-11-27, 0 since): the config of an old prune gives the lambda it ran with."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "options": {"prune": {"n": 10, "lambda": None, "k": None, "hard-prune": 0.2, "influence-v": "stationary"}},
        "selection": {"method": "dealrec", "lambda": 0.3, "k": 50, "hard_prune": 0.2}}))
    doc = tomllib.loads(config_from_run(run))
    assert doc == {"prune": {"n": 10, "lambda": 0.3, "k": 50, "hard-prune": 0.2, "influence-v": "stationary",
                             "allocation": "equal"}}
    config = tmp_path / "run.toml"
    config.write_text(config_from_run(run))
    assert read_config(config, _command("prune")) == {"n": 10, "lam": 0.3, "k": 50, "hard_prune": 0.2,
                                                      "influence_v": "stationary", "allocation": "equal"}


def test_a_select_that_left_the_hard_prune_to_its_method_records_the_share_it_used(tmp_path):
    """select's --hard-prune left out is the method's share (0.1 for dealrec until session 16, 0 since): the
    config of such a run gives the share its selection used, so it selects the same again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "options": {"select": {"method": "dealrec", "n": 10, "hard-prune": None}},
        "selection": {"method": "dealrec", "lambda": 0.0, "k": 50, "hard_prune": 0.1}}))
    assert tomllib.loads(config_from_run(run)) == {"select": {"method": "dealrec", "n": 10, "hard-prune": 0.1,
                                                              "allocation": "equal"}}


def test_a_selection_that_left_the_allocation_to_its_method_records_the_one_it_was_given(tmp_path):
    """--allocation left out is the method's default, which may change: the config gives the allocation the
    selection was asked for (auto, not the budgets auto happened to take), so a replay decides again the same way."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "options": {"select": {"method": "dealrec", "n": 10, "allocation": None},
                    "prune": {"n": 10, "allocation": None}},
        "selection": {"method": "dealrec", "k": 50, "hard_prune": 0.0, "allocation": "auto",
                      "allocation_used": "sqrt"}}))
    doc = tomllib.loads(config_from_run(run))
    assert doc["select"] == {"method": "dealrec", "n": 10, "allocation": "auto"}
    assert doc["prune"]["allocation"] == "auto"


@pytest.mark.parametrize("fallback_now,written", [("sqrt", "auto"), ("proportional", "sqrt")])
def test_an_auto_run_that_fell_back_replays_its_coreset_when_the_fallback_has_changed(tmp_path, monkeypatch,
                                                                                   fallback_now, written):
    """auto's fallback is the same selection as asking for those budgets: when today's auto would fall back to
    others (strata.AUTO_FALLBACK changed since), the config gives the budgets the run took, so the replay selects
    the run's coreset; while the fallback is the same, auto is kept and decides again the same way."""
    monkeypatch.setattr(runconfig, "AUTO_FALLBACK", fallback_now)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "options": {"select": {"method": "dealrec", "n": 10, "allocation": "auto"},
                    "prune": {"n": 10, "allocation": None}},
        "selection": {"method": "dealrec", "k": 50, "hard_prune": 0.0, "allocation": "auto",
                      "allocation_used": "sqrt"}}))
    text = config_from_run(run)
    doc = tomllib.loads(text)
    assert doc["select"]["allocation"] == written and doc["prune"]["allocation"] == written
    assert (f"today's auto does not take ({fallback_now})" in text) == (written != "auto")
    # an auto run that kept the paper's budgets replays as auto whatever the fallback
    (run / "manifest.json").write_text(json.dumps({
        "options": {"select": {"method": "dealrec", "n": 10, "allocation": "auto"}},
        "selection": {"method": "dealrec", "allocation": "auto", "allocation_used": "equal"}}))
    assert tomllib.loads(config_from_run(run))["select"]["allocation"] == "auto"
