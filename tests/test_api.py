"""The Python API (docs/api.md): one function per command, the command's options as keywords with its
defaults, its checks, typed results; ``import dealrec`` stays cheap; ``python -m dealrec``; and the
worked example of docs/api.md, run from the doc itself."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dealrec
from dealrec.cli import main
from dealrec.manifest import RunManifest
from dealrec.runconfig import flag_name, python_name
from dealrec_core.errors import DealrecError
from surrogates.base import save_surrogate
from surrogates.registry import build_surrogate
from test_defaults import _same, click_defaults
from test_prune import write_release
from tiny_surrogate import tiny_samples, write_tiny_prepared

ROOT = Path(__file__).resolve().parents[1]
API_COMMANDS = {"prepare": "prepare", "train_surrogate": "train-surrogate", "score": "score", "select": "select",
                "export": "export", "prune": "prune", "compare": "compare"}
N_ITEMS = 30


def _command(path: str) -> click.Command:
    return main.get_command(click.Context(main), path)


def _text(value):
    """A sequence default counts as the comma-separated text its option takes (``--methods a,b``)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) and all(
        isinstance(v, str) for v in value) else value


@pytest.mark.parametrize("name", sorted(API_COMMANDS))
def test_a_function_takes_its_commands_options_by_flag_name_with_the_same_defaults(name):
    command = _command(API_COMMANDS[name])
    params = inspect.signature(getattr(dealrec, name)).parameters
    arguments = [p.name for p in command.params if isinstance(p, click.Argument)]
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "config"]
    first = arguments + [python_name(flag_name(p)) for p in options if p.required]
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert positional == first
    assert keywords == {python_name(flag_name(p)) for p in options if not p.required}
    given = click_defaults(command)
    wrong = [f"{n}={params[n].default!r}, the option gives {given[p]!r}"
             for n, p in [(python_name(flag_name(o)), o.name) for o in options if not o.required]
             + [(a, a) for a in arguments if params[a].default is not inspect.Parameter.empty]
             if not _same(_text(params[n].default), given[p]) and not (
                 name == "prepare" and p == "split" and tuple(params[n].default) == given[p])]
    assert not wrong, f"dealrec.{name}: " + "; ".join(wrong)


def test_import_dealrec_is_cheap_and_both_import_forms_give_the_module_that_calls_the_function():
    code = r"""
import sys
import dealrec
loaded = sorted(m for m in sys.modules if m.startswith(("dealrec.", "torch")))
order = sys.argv[1]
if order == "module-first":
    import dealrec.select as module
    from dealrec import select
else:
    from dealrec import select
    import dealrec.select as module
print(loaded, select is module is sys.modules["dealrec.select"], callable(select), hasattr(select, "run_select"),
      "torch" in sys.modules)   # the API function is loaded at the first call
"""
    for order in ("module-first", "function-first"):
        out = subprocess.run([sys.executable, "-c", code, order], capture_output=True, text=True, cwd=ROOT,
                             check=True).stdout.split()
        # import dealrec: no command module, no torch
        assert out == ["[]", "True", "True", "True", "False"], (order, out)
    # the other names: prepare is a package module (its function kept), train_surrogate a plain function
    assert callable(dealrec.prepare) and dealrec.prepare.prepare.__module__ == "dealrec.prepare"
    assert dealrec.train_surrogate is dealrec.api.train_surrogate
    assert all(callable(getattr(dealrec, name)) for name in API_COMMANDS)
    assert inspect.signature(dealrec.select) == inspect.signature(dealrec.api.select)


def test_python_m_dealrec_is_the_command():
    out = subprocess.run([sys.executable, "-m", "dealrec", "select", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: dealrec select [OPTIONS] [RUN]")
    out = subprocess.run([sys.executable, "-m", "dealrec", "select", str(ROOT / "no-such-run")],
                         capture_output=True, text=True, cwd=ROOT)
    assert (out.returncode, out.stderr.count("\n")) == (2, 1) and out.stderr.startswith("error: ")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A tiny prepared folder, a SASRec for it and its scores (influence only), made with the API."""
    root = tmp_path_factory.mktemp("api")
    sur = root / "sur"
    sur.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                                   max_len=10, dropout=0.0, init_std=0.3, seed=3), sur)
    data = write_tiny_prepared(root / "data", tiny_samples(40, N_ITEMS, seed=7), N_ITEMS, shard_size=16)
    result = dealrec.score(data, sur, root / "run", target="none", workers=0, hvp="exact", hessian_samples=32,
                           hvp_batch=8, batch_size=8, effort_batch_size=8, shard_size=16, quiet=True)
    return root, data, sur, result


def test_results_are_typed_and_point_at_what_was_written(scored):
    root, data, sur, result = scored
    assert isinstance(result, dealrec.api.ScoreResult) and isinstance(result.manifest, RunManifest)
    assert result.scores == root / "run" / "scores.parquet" and result.scores.exists()
    assert result.manifest.data["command"] == "dealrec score"
    assert result.manifest.data["options"]["score"]["hvp"] == "exact"
    chosen = dealrec.select(result.out, method="influence", n=10, k=3, out=root / "sel", no_plot=True)
    assert (chosen.out, chosen.plot) == (root / "sel", None)
    assert pq.read_table(chosen.coreset).num_rows == chosen.selection["n_selected"] == 10
    assert chosen.manifest.selection == chosen.selection
    with pytest.raises(dataclasses.FrozenInstanceError):
        chosen.out = root


def test_the_function_and_the_command_select_and_record_the_same(scored, tmp_path):
    root, data, sur, result = scored
    options = ["--method", "influence", "--n", "12", "--k", "3", "--hard-prune", "0.2", "--seed", "5", "--no-plot"]
    res = CliRunner().invoke(main, ["select", str(result.out), "--out", str(tmp_path / "cli"), *options])
    assert res.exit_code == 0, res.output
    api = dealrec.select(result.out, method="influence", n=12, k=3, hard_prune=0.2, seed=5, no_plot=True,
                         out=tmp_path / "api")
    assert pq.read_table(api.coreset).equals(pq.read_table(tmp_path / "cli" / "coreset.parquet"))
    recorded = RunManifest.read(tmp_path / "cli").data["options"]["select"]
    assert api.manifest.data["options"]["select"] == recorded
    assert recorded["hard-prune"] == 0.2 and recorded["no-plot"] is True and "out" not in recorded


@pytest.mark.parametrize("call, says", [
    (lambda run: dealrec.select(run, method="influense"), "--method: 'influense' is not one of"),
    (lambda run: dealrec.select(run, n=3.5), "--n: expected an integer, got a number (3.5)"),
    (lambda run: dealrec.select(run, seed=-1), "--seed: seed -1 is out of range"),
    (lambda run: dealrec.select(run, no_plot="yes"), "--no-plot: expected true or false"),
    (lambda run: dealrec.prune(run / "data", run / "pruned", worker_nice=30), "--worker-nice: 30 is not in the range"),
    (lambda run: dealrec.export(run, format="csv"), "--format: 'csv' is not one of"),
    (lambda run: dealrec.prepare(run / "missing", run / "prepared"), "no such file or folder"),
    (lambda run: dealrec.prepare(run / "data", run / "prepared", split=(0.5, 0.2)), "--split: "),
    (lambda run: dealrec.train_surrogate(run / "data", run / "s", model="sasrec", weighting="x"), "--weighting: "),
])
def test_a_bad_argument_raises_dealrec_error_before_any_work(tmp_path, call, says):
    (tmp_path / "data").mkdir()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DealrecError, match=re.escape(says)):
        call(tmp_path)
    assert sorted(tmp_path.rglob("*")) == before


def test_prune_takes_scores_options_and_refuses_an_unknown_keyword(tmp_path):
    params = inspect.signature(dealrec.prune).parameters
    assert {"hvp", "target", "workers", "threads_per_worker", "lambda_"} <= set(params)
    with pytest.raises(TypeError, match="unexpected keyword argument 'surrogate_epoch'"):
        dealrec.prune(tmp_path, tmp_path / "out", surrogate_epoch=2)


# ----------------------------------------------------------------------------- docs/api.md's example

def doc_code_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_worked_example_of_docs_api_md_runs(tmp_path, monkeypatch, capsys):
    blocks = doc_code_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 3
    write_release(tmp_path / "games-raw")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEALREC_CACHE", str(tmp_path / "cache"))   # the item embeddings of compare's TIGER
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)
    printed = capsys.readouterr().out
    chosen, pruned, report = namespace["chosen"], namespace["pruned"], namespace["report"]
    assert pq.read_table(chosen.coreset).num_rows == 16
    assert json.loads((tmp_path / "games-run" / "bigrec.json").read_text())[0].keys() == {"instruction", "input",
                                                                                          "output"}
    assert pq.read_table(pruned.coreset).num_rows == 16
    assert "--method: 'influense' is not one of" in printed
    assert "[prune]\nn = 16\n" in printed and 'target = "none"' in printed
    assert [r["name"] for r in report.report["rows"]][:2] == ["random", "influence"]
    assert report.report_md.exists()
