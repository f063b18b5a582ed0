"""Inputs are never written; outputs are all-or-nothing (docs/reliability.md).

Every command that writes refuses, before writing anything, an output that is an input, lies inside
one, or would replace one; a file-system error (a file where a folder goes, a read-only folder, a full
disk) is one ``error:`` line naming the path, exit 2, and leaves no half-written file; a temporary
left by a killed run is removed by the next run that writes the same output. Everything runs through
the command line, and every input is hashed before and after.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import EvalSplit, samples_table, write_parquet_atomic, write_samples
from dealrec_core.paths import HOST

N_ITEMS, N_USERS = 40, 60
DEAD_PID = 2**22 + 7   # above Linux's largest pid_max: no process can have it


# ----------------------------------------------------------------------------- helpers

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, *fragments) -> str:
    """Exit 2, exactly one line on stderr, starting with 'error:', naming what it must; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert str(fragment) in lines[0], (str(fragment), lines[0])
    return lines[0]


def tree(path: Path) -> dict:
    """Every file under ``path`` (or the file itself) by relative name -> sha256, and every folder."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def write_release(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_train.txt").write_text("10 1 2 3\n11 4\n12 2 5 1 4\n")
    (folder / "sequential_valid.txt").write_text("10 5\n11\n12 3 3\n")
    (folder / "sequential_test.txt").write_text("10 4\n11 1 2\n12\n")
    (folder / "items.jsonl").write_text("".join(json.dumps({"item": i, "title": f"game {i}"}) + "\n"
                                                for i in range(1, 6)))
    return folder


def write_log(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user,item,timestamp\n" + "".join(f"u{u},i{(u * 3 + k) % 7},{u * 10 + k}\n"
                                                      for u in range(6) for k in range(4)))
    return path


def make_prepared(root: Path) -> Path:
    """A tiny prepared-data folder (samples, items, eval splits)."""
    rng = np.random.default_rng(0)
    seqs = [list(range(s, s + n)) for s, n in zip(rng.integers(1, N_ITEMS - 8, N_USERS),
                                                  rng.integers(2, 7, N_USERS))]
    write_samples(samples_table(np.arange(N_USERS), np.arange(N_USERS), [s[:-2] for s in seqs],
                                [s[-2] for s in seqs]), root / "samples")
    write_parquet_atomic(pa.table({"item": pa.array(np.arange(1, N_ITEMS + 1), pa.int32()),
                                   "title": [f"game {i}" for i in range(1, N_ITEMS + 1)]}), root / "items.parquet")
    (root / "eval").mkdir()
    for name, shift in (("valid", 0), ("test", 1)):
        split = EvalSplit(np.arange(N_USERS), [np.array(s[:-1], np.int32) for s in seqs],
                          [np.array([s[-1] + shift], np.int32) for s in seqs])
        write_parquet_atomic(split.to_table(), root / "eval" / f"{name}.parquet")
    (root / "manifest.json").write_text(json.dumps({"note": "prepared by the test"}))
    return root


def make_run(root: Path, data: Path) -> Path:
    """A run folder as 'dealrec select' leaves it: scores, coreset and a manifest naming the data."""
    root.mkdir(parents=True, exist_ok=True)
    sid = np.arange(N_USERS, dtype=np.int64)
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"sample_id": sid, "influence": rng.normal(size=N_USERS),
                             "effort": rng.random(N_USERS)}), root / "scores.parquet")
    samples = pq.read_table(data / "samples")
    pq.write_table(samples.slice(0, 10), root / "coreset.parquet")
    (root / "manifest.json").write_text(json.dumps({"data": str(data)}))
    return root


# ----------------------------------------------------------------------------- prepare

def test_prepare_refuses_out_equal_inside_or_around_a_release_folder(tmp_path):
    src = write_release(tmp_path / "release")
    before = tree(src)
    one_error(run("prepare", src, "--out", src, "--overwrite"), "is the input SRC", src)
    one_error(run("prepare", src, "--out", src / "prepared"), "inside the input SRC", src / "prepared", src)
    # the output would replace a folder that holds the source
    one_error(run("prepare", src, "--out", tmp_path, "--overwrite"), "the input SRC", src, tmp_path)
    # symlinks are resolved: a link to the source is the source
    (tmp_path / "link").symlink_to(src, target_is_directory=True)
    one_error(run("prepare", src, "--out", tmp_path / "link", "--overwrite"), "is the input SRC")
    assert tree(src) == before
    assert not (src / "prepared").exists() and no_temporaries(tmp_path) == []


def test_prepare_refuses_out_equal_inside_or_around_a_log_file(tmp_path):
    log = write_log(tmp_path / "logs" / "log.csv")
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "".join(f"i{i},game {i}\n" for i in range(7)))
    before, before_items = tree(log.parent), tree(items)
    one_error(run("prepare", log, "--out", log, "--overwrite"), "is the input SRC", log)
    one_error(run("prepare", log, "--out", log / "sub"), "inside the input SRC", log)
    one_error(run("prepare", log, "--out", log.parent, "--overwrite"), "the input SRC", log, log.parent)
    one_error(run("prepare", log, "--items", items, "--out", items, "--overwrite"), "is the input --items", items)
    assert tree(log.parent) == before and tree(items) == before_items
    # a good run next to them still works
    assert run("prepare", log, "--out", tmp_path / "ok").exit_code == 0


# ----------------------------------------------------------------------------- select, export

def test_select_refuses_writing_over_or_into_its_data(tmp_path):
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    before, before_run = tree(data), tree(run_dir)
    one_error(run("select", run_dir, "--data", data, "--out", data, "--no-plot"), "is the input --data", data)
    one_error(run("select", run_dir, "--data", data, "--out", data / "samples", "--no-plot"),
              "inside the input --data", data / "samples")
    # RUN that is the data folder itself: select would rewrite the data's manifest.json
    one_error(run("select", data, "--method", "random", "--data", data, "--no-plot"), "is the input --data")
    assert tree(data) == before and tree(run_dir) == before_run
    # data beside what select writes (RUN/data, as 'dealrec prune' lays it out) is fine and untouched
    inner = make_prepared(tmp_path / "run2" / "data")
    inner_before = tree(inner)
    res = run("select", "--method", "random", "--data", inner, "--out", tmp_path / "run2", "--n", "5", "--no-plot")
    assert res.exit_code == 0, res.output
    assert tree(inner) == inner_before


def test_export_refuses_data_that_is_run_inside_it_or_where_it_writes(tmp_path):
    data = make_prepared(tmp_path / "data")
    before = tree(data)
    # RUN is the data folder (with a coreset in it): export would rewrite its manifest.json
    pq.write_table(pq.read_table(data / "samples").slice(0, 5), data / "coreset.parquet")
    before = tree(data)
    one_error(run("export", data, "--data", data), "is the input --data", data)
    # RUN inside the data folder
    inner_run = make_run(data / "run", data)
    before = tree(data)
    one_error(run("export", inner_run, "--data", data), "inside the input --data", inner_run, data)
    assert tree(data) == before
    # a data folder at RUN/tiger, which export writes
    run_dir = make_run(tmp_path / "run", data)
    tiger_data = make_prepared(run_dir / "tiger")
    tiger_before = tree(tiger_data)
    one_error(run("export", run_dir, "--data", tiger_data), "the input --data", "tiger", "which this command writes")
    assert tree(tiger_data) == tiger_before and not (run_dir / "bigrec.json").exists()


def test_export_file_where_its_folder_goes_writes_nothing(tmp_path):
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    (run_dir / "tiger").write_text("not a folder")
    before = tree(run_dir)
    one_error(run("export", run_dir), run_dir / "tiger", "not a folder")
    assert tree(run_dir) == before and no_temporaries(run_dir) == []   # not even bigrec.json
    (run_dir / "tiger").unlink()
    (run_dir / "bigrec.json").mkdir()
    one_error(run("export", run_dir), run_dir / "bigrec.json", "is a folder")
    assert not (run_dir / "tiger").exists()


def test_export_full_disk_leaves_no_partial_bigrec_json(tmp_path, monkeypatch):
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    assert run("export", run_dir).exit_code == 0
    before = tree(run_dir)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)   # the data is written, the disk refuses to keep it
    pq.write_table(pq.read_table(data / "samples").slice(20, 7), run_dir / "coreset.parquet")
    changed = tree(run_dir)
    line = one_error(run("export", run_dir), run_dir / "bigrec.json", "No space left on device")
    assert ".tmp-" not in line                       # the user's path, not the temporary one
    assert tree(run_dir) == changed                  # the old bigrec.json whole, no temporary beside it
    assert changed["bigrec.json"] == before["bigrec.json"]
    monkeypatch.undo()
    assert run("export", run_dir).exit_code == 0
    assert len(json.loads((run_dir / "bigrec.json").read_text())) == 7


# ----------------------------------------------------------------------------- finetune, train-surrogate, score

def test_finetune_tiger_refuses_out_equal_inside_or_around_an_input(tmp_path):
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    before, before_run = tree(data), tree(run_dir)
    base = ["finetune", "tiger", "--data", data, "--quiet"]
    one_error(run(*base, "--train", data / "samples", "--out", data, "--overwrite"), "is the input --data", data)
    one_error(run(*base, "--train", data / "samples", "--out", data / "samples", "--overwrite"),
              "is the input --train")
    one_error(run(*base, "--train", run_dir / "coreset.parquet", "--out", data / "model"),
              "inside the input --data", data / "model")
    one_error(run(*base, "--train", run_dir / "coreset.parquet", "--out", run_dir, "--overwrite"),
              "the input --train", run_dir / "coreset.parquet", "replaces as a whole")
    assert tree(data) == before and tree(run_dir) == before_run


def test_finetune_bigrec_refuses_out_around_the_llm(tmp_path):
    data = make_prepared(tmp_path / "data")
    llm = tmp_path / "models" / "llm"
    llm.mkdir(parents=True)
    (llm / "config.json").write_text("{}")
    before = tree(tmp_path / "models")
    one_error(run("finetune", "bigrec", "--llm", llm, "--data", data, "--train", data / "samples",
                  "--out", tmp_path / "models", "--overwrite"), "the input --llm", llm)
    one_error(run("finetune", "bigrec", "--llm", llm, "--data", data, "--train", data / "samples",
                  "--out", llm / "out"), "inside the input --llm")
    assert tree(tmp_path / "models") == before


def test_train_surrogate_refuses_out_equal_or_around_its_data(tmp_path):
    data = make_prepared(tmp_path / "d" / "data")
    before = tree(data)
    one_error(run("train-surrogate", data, "--out", data, "--overwrite", "--quiet"), "is the input DATA", data)
    one_error(run("train-surrogate", data, "--out", tmp_path / "d", "--overwrite", "--quiet"),
              "the input DATA", "replaces as a whole")
    assert tree(data) == before


def test_score_and_prune_refuse_writing_over_their_inputs(tmp_path):
    data = make_prepared(tmp_path / "data")
    def fake_surrogate(folder: Path) -> Path:   # score refuses before it loads the weights
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")
        return folder

    surrogate = fake_surrogate(tmp_path / "surrogate")
    before, before_sur = tree(data), tree(surrogate)
    one_error(run("score", data, "--surrogate", surrogate, "--out", data, "--quiet"), "is the input DATA")
    one_error(run("score", data, "--surrogate", surrogate, "--out", surrogate / "run", "--quiet"),
              "inside the input --surrogate")
    # a surrogate at RUN/work, which score fills with its shards
    work_sur = fake_surrogate(tmp_path / "run" / "work")
    one_error(run("score", data, "--surrogate", work_sur, "--out", tmp_path / "run", "--quiet"),
              "the input --surrogate", "work which this command writes")
    one_error(run("prune", data, "--out", data, "--quiet"), "is the input DATA", data)
    # raw data inside RUN/data, which prune prepares into
    raw = write_release(tmp_path / "run3" / "data" / "release")
    raw_before = tree(raw)
    one_error(run("prune", raw, "--out", tmp_path / "run3", "--quiet"), "the input DATA", "data which this command")
    one_error(run("compare", data, "--out", data, "--methods", "random", "--quiet"), "is the input DATA", data)
    assert tree(data) == before and tree(surrogate) == before_sur and tree(raw) == raw_before
    assert not (tmp_path / "run" / "scores.parquet").exists() and not (tmp_path / "run3" / "manifest.json").exists()


# ----------------------------------------------------------------------------- file-system errors

def test_path_component_that_is_a_file(tmp_path):
    src = write_release(tmp_path / "release")
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    one_error(run("prepare", src, "--out", blocker / "sub"), blocker / "sub", f"{blocker} is a file, not a folder")
    one_error(run("select", run_dir, "--out", blocker / "sub", "--no-plot"), f"{blocker} is a file")
    one_error(run("finetune", "tiger", "--data", data, "--train", run_dir / "coreset.parquet",
                  "--out", blocker / "sub", "--quiet"), f"{blocker} is a file")
    one_error(run("prepare", src, "--out", blocker, "--overwrite"), blocker, "is a file, not a folder")
    assert blocker.read_text() == "x" and no_temporaries(tmp_path) == []


def _permissions_enforced(folder: Path) -> bool:
    """False for root (and anyone else who may write in a folder without write permission)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_text("x")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


def test_read_only_output_folder(tmp_path):
    if not _permissions_enforced(tmp_path):   # root: run it with setpriv --bounding-set=-dac_override,...
        pytest.skip("root ignores file permissions")
    src = write_release(tmp_path / "release")
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_error(run("prepare", src, "--out", ro / "out"), ro / "out", "permission denied")
        one_error(run("select", run_dir, "--out", ro, "--no-plot"), ro, "permission denied")
        assert list(ro.iterdir()) == []
        before = tree(run_dir)
        run_dir.chmod(0o555)
        one_error(run("export", run_dir), run_dir, "permission denied")
        run_dir.chmod(0o755)
        assert tree(run_dir) == before
    finally:
        ro.chmod(0o755)
        run_dir.chmod(0o755)


def test_prepare_full_disk_keeps_the_previous_output_and_no_temporary(tmp_path, monkeypatch):
    src = write_release(tmp_path / "release")
    out = tmp_path / "prepared"
    assert run("prepare", src, "--out", out).exit_code == 0
    before = tree(out)
    real_write = pq.write_table

    def half_then_full(table, where, *args, **kwargs):
        real_write(table, where, *args, **kwargs)
        Path(where).write_bytes(Path(where).read_bytes()[:10])   # half a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq, "write_table", half_then_full)
    line = one_error(run("prepare", src, "--out", out, "--overwrite"), out, "No space left on device")
    assert ".tmp-" not in line
    assert tree(out) == before and no_temporaries(tmp_path) == []
    out2 = tmp_path / "fresh"
    one_error(run("prepare", src, "--out", out2), out2, "No space left on device")
    assert not out2.exists() and no_temporaries(tmp_path) == []


def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    src = write_release(tmp_path / "release")
    out = tmp_path / "prepared"
    dead = tmp_path / f".prepared.tmp-{DEAD_PID}@{HOST}-abcd1234"      # a killed prepare's half-built folder
    dead.mkdir()
    (dead / "items.parquet").write_bytes(b"half")
    dead_old = tmp_path / f".prepared.old-{DEAD_PID}@{HOST}-zz"       # killed while replacing
    (dead_old / "x").mkdir(parents=True)
    live = tmp_path / f".prepared.tmp-{os.getppid()}@{HOST}-live0001"  # a run still going: not ours to remove
    live.mkdir()
    elsewhere = tmp_path / f".prepared.tmp-{DEAD_PID}@0badc0de-far00001"  # another machine's (shared disk)
    elsewhere.mkdir()
    other = tmp_path / f".other.tmp-{DEAD_PID}@{HOST}-abcd1234"       # another output's: left alone
    other.mkdir()
    assert run("prepare", src, "--out", out).exit_code == 0
    assert not dead.exists() and not dead_old.exists()
    assert live.exists() and elsewhere.exists() and other.exists()

    # files: a killed export's half-written bigrec.json temporaries (new and older names)
    data = make_prepared(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", data)
    stale = [run_dir / f".bigrec.json.tmp-{DEAD_PID}@{HOST}", run_dir / f".bigrec.json.tmp-{DEAD_PID}",
             run_dir / f".manifest.json.tmp-{DEAD_PID}@{HOST}"]
    for p in stale:
        p.write_text('[{"instruction": "half')
    keep = run_dir / f".bigrec.json.tmp-{os.getppid()}@{HOST}"
    keep.write_text("a live writer's")
    assert run("export", run_dir).exit_code == 0
    assert not any(p.exists() for p in stale) and keep.exists()
    assert json.loads((run_dir / "bigrec.json").read_text())
