"""RUN/manifest.json: one reader, one writer, one answer to "which folder does this run name".

- the key structure that score, select and export write is exactly what it was before the manifest
  got its own module (``manifest_keys.json``, recorded from that code);
- every shape of a recorded data / surrogate folder is still read;
- a manifest that cannot be read is the same one-line error for every command, before any work;
- the writer sets its own keys and leaves every other one where it was.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.manifest import MANIFEST_FILE, RunManifest, update_manifest
from dealrec_core.data import samples_table
from dealrec_core.errors import InputError
from surrogates.base import save_surrogate
from surrogates.registry import build_surrogate
from tiny_lm import make_tiny_causal_lm
from tiny_surrogate import tiny_samples, write_tiny_prepared

N_ITEMS = 30
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny prepared folder and a SASRec for it."""
    root = tmp_path_factory.mktemp("manifest")
    sur = root / "sur"
    sur.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                                   max_len=10, dropout=0.0, init_std=0.3, seed=3), sur)
    return root, write_tiny_prepared(root / "data", tiny_samples(40, N_ITEMS, seed=7), N_ITEMS, shard_size=16), sur


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(*args) -> None:
    res = _cli(*args)
    assert res.exit_code == 0, res.output + repr(res.exception)


def key_structure(obj):
    """Keys (in order) and value types of a JSON value; a list shows each distinct element structure once."""
    if isinstance(obj, dict):
        return {k: key_structure(v) for k, v in obj.items()}
    if isinstance(obj, list):
        seen = []
        for x in obj:
            s = key_structure(x)
            if s not in seen:
                seen.append(s)
        return ["list", *seen]
    return type(obj).__name__


# ----------------------------------------------------------------------------- the JSON on disk


def test_score_select_export_write_the_same_keys_as_before(inputs, tmp_path):
    root, data, sur = inputs
    llm = make_tiny_causal_lm("llama", [f"Item number {i}" for i in range(1, N_ITEMS + 1)], tmp_path / "llm",
                              hidden=16, layers=1)
    run = tmp_path / "run"
    score = ("score", data, "--surrogate", sur, "--out", run, "--target", "bigrec", "--llm", llm, "--workers", 0,
             "--damping", 0.1, "--lissa-scale", 10, "--hessian-samples", 32, "--hvp-batch", 8, "--batch-size", 8,
             "--effort-batch-size", 8, "--shard-size", 16, "--quiet")
    stages = {}

    def stage(name, *args, folder=run):
        _ok(*args)
        stages[name] = json.loads((folder / MANIFEST_FILE).read_text())

    stage("score", *score)
    stage("select_el2n", "select", run, "--method", "el2n", "--n", 10, "--no-plot")   # records a baseline column
    stage("select_dealrec", "select", run, "--n", 10, "--k", 3)
    stage("export", "export", run)
    stage("score_again", *score)                    # a resumed score: its keys in place, the others kept
    stage("select_out", "select", run, "--method", "random", "--n", 5, "--out", tmp_path / "run2", "--no-plot",
          folder=tmp_path / "run2")                 # a fresh --out starts from RUN's manifest
    got = {}
    for name, manifest in stages.items():
        got[name] = key_structure(manifest)
        got[name]["package_versions"] = "dict"     # which packages are installed is the machine's business
    if os.environ.get("DEALREC_WRITE_MANIFEST_KEYS"):   # a maintainer adding keys on purpose: review the diff
        (HERE / "manifest_keys.json").write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads((HERE / "manifest_keys.json").read_text())
    assert json.dumps(got, indent=1) == json.dumps(expected, indent=1)   # keys, their order and value types
    assert stages["score_again"]["hvp"]["resumed"] is True
    assert stages["score_again"]["selection"] == stages["export"]["selection"]
    assert stages["score_again"]["exports"] == stages["export"]["exports"]


# ----------------------------------------------------------------------------- the folders a run names

SHAPES = {
    "top level": lambda key, d: {key: d},
    "top level, path": lambda key, d: {key: {"path": d, "sha256": "x"}},
    "top level, dir": lambda key, d: {key: {"dir": d}},
    "top level, root": lambda key, d: {key: {"root": d}},
    "top level, out": lambda key, d: {key: {"out": d}},
    "inputs (score)": lambda key, d: {"inputs": {key: d}},
    "inputs, path": lambda key, d: {"inputs": {key: {"path": d}}},
    "selection.inputs (select)": lambda key, d: {"selection": {"inputs": {key: d}}},
    "selection.inputs, dir": lambda key, d: {"selection": {"inputs": {key: {"dir": d}}}},
}


@pytest.mark.parametrize("key", ["data", "surrogate"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_recorded_shape_names_the_folder(tmp_path, shape, key):
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_FILE).write_text(json.dumps(SHAPES[shape](key, str(tmp_path / "folder"))))
    manifest = RunManifest.read(run)
    assert manifest.named_folder(key) == str(tmp_path / "folder")
    other = "surrogate" if key == "data" else "data"
    assert manifest.named_folder(other) is None
    assert (manifest.data_folder(), manifest.surrogate_folder())[key == "surrogate"] == str(tmp_path / "folder")


def test_named_folder_precedence_and_relative_paths(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # the top level first, then inputs, then selection.inputs
    m = RunManifest(run, {"selection": {"inputs": {"data": "/c"}}, "inputs": {"data": "/b"}, "data": "/a"})
    assert m.data_folder() == "/a"
    m = RunManifest(run, {"selection": {"inputs": {"data": "/c"}}, "inputs": {"data": "/b"}})
    assert m.data_folder() == "/b"
    # a relative path: from the working folder when it is there, else from the run folder
    assert RunManifest(run, {"data": "data"}).data_folder() == str(run / "data")
    (tmp_path / "data").mkdir()
    assert RunManifest(run, {"data": "data"}).data_folder() == "data"
    # malformed sections name nothing
    assert RunManifest(run, {"data": 3, "inputs": [], "selection": "x"}).data_folder() is None
    assert RunManifest(run, {"selection": {"inputs": {"baseline_columns": []}}}).baseline_columns() == {}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_select_and_export_find_the_data_in_every_shape(inputs, tmp_path, shape):
    _, data, _ = inputs
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_FILE).write_text(json.dumps(SHAPES[shape]("data", str(data))))
    _ok("select", run, "--method", "random", "--n", 7, "--no-plot")
    _ok("export", run)
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    assert manifest["selection"]["inputs"]["data"] == str(data) and manifest["exports"]["n_samples"] == 7
    assert len(json.loads((run / "bigrec.json").read_text(encoding="utf-8"))) == 7


# ----------------------------------------------------------------------------- one reader

BAD = {
    "not JSON": ('{"data": ', "not valid JSON (Expecting value: line 1 column 10 (char 9))"),
    "not an object": ("[1, 2]", "not a JSON object"),
    "not UTF-8": (b'{"data": "\xff"}', "not valid JSON ("),
}


def _snapshot(root: Path) -> dict:
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _write_bad(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("command", ["score", "prune", "select", "select --out", "export"])
def test_an_unreadable_manifest_is_one_line_before_any_work(inputs, tmp_path, command, bad):
    """Every command says the same line; before, score and prune overwrote a bad manifest with their own
    record (and crashed on a JSON list), and select --out / export --format tiger wrote their files first."""
    _, data, sur = inputs
    run = tmp_path / "run"
    content, message = BAD[bad]
    target = run
    if command in ("score", "prune"):
        args = [command, data, "--surrogate", sur, "--out", run, "--target", "none", "--workers", 0, "--quiet"]
    else:
        samples = tiny_samples(40, N_ITEMS, seed=7)
        run.mkdir()
        pq.write_table(samples_table(samples.sample_id, samples.user, samples.history, samples.target),
                       run / "coreset.parquet")
        if command == "export":
            args = ["export", run, "--format", "tiger"]
        elif command == "select":
            args = ["select", run, "--method", "random", "--data", data, "--n", 5, "--no-plot"]
        else:
            target = tmp_path / "out"
            args = ["select", run, "--method", "random", "--data", data, "--n", 5, "--out", target, "--no-plot"]
    _write_bad(target / MANIFEST_FILE, content)
    before = _snapshot(tmp_path)
    res = _cli(*args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: {target / MANIFEST_FILE}: {message}")
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert _snapshot(tmp_path) == before   # nothing written, the bad file left as it was


def test_the_reader(tmp_path):
    assert RunManifest.read(tmp_path / "nowhere").data == {}   # a missing file: an empty manifest
    (tmp_path / MANIFEST_FILE).mkdir()
    with pytest.raises(InputError, match=r"manifest.json: cannot be read \("):
        RunManifest.read(tmp_path)
    (tmp_path / MANIFEST_FILE).rmdir()
    (tmp_path / MANIFEST_FILE).write_text('"text"')
    with pytest.raises(InputError, match="manifest.json: not a JSON object"):
        RunManifest.read(tmp_path)


# ----------------------------------------------------------------------------- one writer


def test_the_writer_sets_its_keys_and_keeps_the_others(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_FILE).write_text(json.dumps({"a": 1, "phases": {"x": 1, "y": 2}, "exports": {"bigrec": "b"},
                                                 "z": [1]}))
    written = update_manifest(run, {"phases": {"y": 3, "w": 4}, "a": 5, "new": {"k": 1}}, merge=("phases",))
    on_disk = json.loads((run / MANIFEST_FILE).read_text())
    assert on_disk == written.data
    assert list(on_disk) == ["a", "phases", "exports", "z", "new"]   # a key already there keeps its place
    assert on_disk["phases"] == {"x": 1, "y": 3, "w": 4} and on_disk["a"] == 5
    assert on_disk["exports"] == {"bigrec": "b"} and on_disk["z"] == [1]
    # replaced, not merged, unless asked
    update_manifest(run, {"exports": {"tiger": ["t"]}})
    assert json.loads((run / MANIFEST_FILE).read_text())["exports"] == {"tiger": ["t"]}
    assert not [p for p in run.iterdir() if p.name != MANIFEST_FILE]   # no temporary left behind


def test_the_writer_starts_a_fresh_folder_from_another_manifest(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    (run / MANIFEST_FILE).write_text(json.dumps({"inputs": {"data": "/d"}, "selection": {"method": "old"}}))
    update_manifest(out, {"selection": {"method": "new"}}, start_from=run)
    assert json.loads((out / MANIFEST_FILE).read_text()) == {"inputs": {"data": "/d"}, "selection": {"method": "new"}}
    assert json.loads((run / MANIFEST_FILE).read_text())["selection"] == {"method": "old"}   # RUN untouched
    # once OUT has its own manifest, that one is updated
    (out / MANIFEST_FILE).write_text(json.dumps({"mine": True}))
    update_manifest(out, {"selection": {"method": "again"}}, start_from=run)
    assert json.loads((out / MANIFEST_FILE).read_text()) == {"mine": True, "selection": {"method": "again"}}


def test_typed_sections_read_what_the_commands_wrote(tmp_path):
    m = RunManifest(tmp_path, {"inputs": {"data": "/d"}, "phases": {"capture": {"seconds": 1.0}},
                               "selection": {"method": "el2n", "inputs": {"baseline_columns": {"el2n": {}}}},
                               "exports": {"n_samples": 3}, "prune": {"n": 4}})
    assert m.inputs["data"] == "/d" and m.phases["capture"]["seconds"] == 1.0
    assert m.selection["method"] == "el2n" and m.baseline_columns() == {"el2n": {}}
    assert m.exports["n_samples"] == 3 and m.prune["n"] == 4
    assert RunManifest(tmp_path, {"exports": ["x"]}).exports == {}   # a malformed section reads as empty
