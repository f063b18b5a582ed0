"""Bad input is refused with one line (docs/reliability.md).

Through the command line: exit status 2, exactly one ``error:`` line on stderr that names the file and
the line/row and field where there is one, no traceback, and nothing written (the whole test folder is
hashed before and after). Also the inputs that look odd but are real and must be accepted: ids with
leading zeros, a release whose training file has users with no training items.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.options import SEED_MAX

N_ITEMS = 6
HUGE_SEED = 2**70


# ----------------------------------------------------------------------------- helpers

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, *fragments, prefix: str = "error: ") -> str:
    """Exit 2, exactly one non-blank line on stderr, starting with ``prefix``; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.output
    if prefix == "error: ":
        assert len(lines) == 1, result.stderr
        line = lines[0]
    else:   # click's own usage errors: usage lines, then one 'Error:' line
        errors = [ln for ln in lines if ln.startswith(prefix)]
        assert len(errors) == 1, result.stderr
        line = errors[0]
    assert line.startswith(prefix), line
    for fragment in fragments:
        assert str(fragment) in line, (str(fragment), line)
    assert "np.float64" not in line and "np.int64" not in line, line
    return line


def tree(path: Path) -> dict:
    """Every file under ``path`` by relative name -> sha256, and every folder (hidden ones included)."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        rel = p.relative_to(path).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def refused_writing_nothing(root: Path, *args, fragments=(), prefix: str = "error: ") -> str:
    before = tree(root)
    line = one_error(run(*args), *fragments, prefix=prefix)
    assert tree(root) == before, "a refused command changed or created files"
    return line


def write_release(folder: Path, train: str = "10 1 2 3\n11 4 5\n12 2 6 1 4\n", valid: str = "10 5\n11\n12 3 3\n",
                  test: str = "10 4\n11 1 2\n12\n", items=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_train.txt").write_text(train)
    (folder / "sequential_valid.txt").write_text(valid)
    (folder / "sequential_test.txt").write_text(test)
    items = items if items is not None else [{"item": i, "title": f"game {i}"} for i in range(1, N_ITEMS + 1)]
    (folder / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    return folder


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A prepared folder (6 items), a run beside it, and a surrogate trained on a 4-item catalogue."""
    from dealrec.prepare import prepare
    from surrogates.base import save_surrogate
    from surrogates.registry import build_surrogate

    root = tmp_path_factory.mktemp("fx")
    prepared = root / "prepared"
    prepare(write_release(root / "raw"), prepared)
    small = root / "small-surrogate"
    small.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS - 2, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=8),
                   small)
    return {"root": root, "prepared": prepared, "small_surrogate": small}


# ----------------------------------------------------------------------------- 1. ids are strings

def test_csv_ids_007_and_7_stay_two_users(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\n" + "".join(
        f"{u},{i},{t}\n" for t, (u, i) in enumerate([("007", "a"), ("007", "b"), ("7", "a"), ("7", "b"),
                                                     ("8", "b"), ("8", "a"), ("007", "c"), ("7", "c"),
                                                     ("8", "c"), ("007", "a")])))
    out = tmp_path / "prepared"
    assert run("prepare", log, "--out", out, "--split", "0.6,0.2,0.2").exit_code == 0
    users = pq.read_table(out / "users.parquet")
    assert users.column("source_id").to_pylist() == ["007", "7", "8"]
    assert pa.types.is_string(users.schema.field("source_id").type)
    assert json.loads((out / "manifest.json").read_text())["counts"]["users"] == 3


def test_csv_leading_zero_item_ids_match_the_items_file(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\nu1,01,1\nu1,002,2\nu2,01,3\nu2,10,4\nu1,10,5\n")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"item": i, "title": f"title {i}"}) + "\n" for i in ("01", "002", "10", "1")))
    out = tmp_path / "prepared"
    result = run("prepare", log, "--out", out, "--items", items, "--split", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "items.parquet")
    assert table.column("source_id").to_pylist() == ["01", "002", "10"]
    assert table.column("title").to_pylist() == ["title 01", "title 002", "title 10"]   # "01" is not "1"


def test_parquet_integer_ids_keep_their_type(tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [7, 8, 7, 8], "item": [1, 2, 2, 1], "timestamp": [1, 2, 3, 4]}), log)
    out = tmp_path / "prepared"
    assert run("prepare", log, "--out", out, "--split", "0.5,0.25,0.25").exit_code == 0
    assert pq.read_table(out / "users.parquet").column("source_id").to_pylist() == [7, 8]


@pytest.mark.parametrize("value,kind", [(True, "boolean"), (False, "boolean"), ([1], "list")])
def test_json_boolean_or_list_user_id_is_refused(tmp_path, value, kind):
    log = tmp_path / "log.jsonl"
    rows = [{"user": "u1", "item": "a", "timestamp": 1}, {"user": "u1", "item": "b", "timestamp": 2},
            {"user": value, "item": "a", "timestamp": 3}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    refused_writing_nothing(tmp_path, "prepare", log, "--out", tmp_path / "out",
                            fragments=("log.jsonl", "line 3", "field 'user'", f"JSON {kind}"))


def test_json_boolean_item_id_in_an_items_file_is_refused(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\nu1,a,1\nu1,b,2\n")
    items = tmp_path / "items.jsonl"
    items.write_text('{"item": "a", "title": "A"}\n{"item": true, "title": "B"}\n')
    refused_writing_nothing(tmp_path, "prepare", log, "--out", tmp_path / "out", "--items", items,
                            fragments=("items.jsonl", "line 2", "field 'item'", "boolean"))


# ----------------------------------------------------------------------------- 2. limits checked up front

def test_release_item_id_far_beyond_the_catalogue_is_refused(tmp_path):
    items = [{"item": i, "title": f"game {i}"} for i in (1, 2, 3, 4, 5, 6, 2147483647)]
    src = write_release(tmp_path / "release", train="10 1 2 3\n11 4 2147483647\n12 2 6 1 4\n", items=items)
    refused_writing_nothing(tmp_path, "prepare", src, "--out", tmp_path / "out",
                            fragments=("items.jsonl", "line 7", "field 'item'", "2147483647", "renumber"))
    # a gap that is merely sparse is fine: 6 items with ids up to 100,012 (= 2 x 6 + 100,000)
    items[-1]["item"] = 100_012
    src = write_release(tmp_path / "release2", train="10 1 2 3\n11 4 100012\n12 2 6 1 4\n", items=items)
    assert run("prepare", src, "--out", tmp_path / "ok").exit_code == 0


def test_prepared_folder_with_a_huge_item_id_is_refused_before_any_allocation(tmp_path, fx):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fx["prepared"], data)
    items = pq.read_table(data / "items.parquet")
    ids = items.column("item").to_pylist()
    ids[2] = 2147483647
    pq.write_table(items.set_column(0, "item", pa.array(ids, pa.int32())), data / "items.parquet")
    refused_writing_nothing(tmp_path, "train-surrogate", data, "--out", tmp_path / "sur",
                            fragments=("items.parquet", "row 3", "field 'item'", "2147483647"))


def _seed_commands(root: Path, fx) -> dict:
    prepared, out = fx["prepared"], root / "out"
    train = prepared / "samples"
    return {
        "train-surrogate": ["train-surrogate", "--seed", HUGE_SEED, prepared, "--out", out],
        "score": ["score", "--seed", HUGE_SEED, prepared, "--surrogate", fx["small_surrogate"], "--out", out],
        "select": ["select", "--seed", HUGE_SEED, "--method", "random", "--data", prepared, "--out", out],
        "prune": ["prune", "--seed", HUGE_SEED, prepared, "--out", out],
        "finetune tiger": ["finetune", "tiger", "--seed", HUGE_SEED, "--data", prepared, "--train", train,
                           "--out", out],
        "finetune bigrec": ["finetune", "bigrec", "--seed", HUGE_SEED, "--llm", root, "--data", prepared,
                            "--train", train, "--out", out],
    }


@pytest.mark.parametrize("command", ["train-surrogate", "score", "select", "prune", "finetune tiger",
                                     "finetune bigrec"])
@pytest.mark.parametrize("seed", [HUGE_SEED, -1, SEED_MAX + 1])
def test_seed_out_of_range_is_refused_by_every_command(tmp_path, fx, command, seed):
    args = [seed if a == HUGE_SEED else a for a in _seed_commands(tmp_path, fx)[command]]
    refused_writing_nothing(tmp_path, *args, prefix="Error: ",
                            fragments=("'--seed'", f"0..{SEED_MAX}"))


def test_seed_at_the_limit_is_accepted(tmp_path, fx):
    out = tmp_path / "run"
    result = run("select", "--method", "random", "--n", "2", "--seed", SEED_MAX, "--data", fx["prepared"],
                 "--out", out, "--no-plot")
    assert result.exit_code == 0, result.output


def test_compare_seeds_out_of_range_are_refused(tmp_path, fx):
    refused_writing_nothing(tmp_path, "compare", fx["prepared"], "--methods", "random", "--seeds", f"0,{HUGE_SEED}",
                            "--out", tmp_path / "cmp", fragments=("--seeds", str(HUGE_SEED), f"0..{SEED_MAX}"))
    refused_writing_nothing(tmp_path, "compare", fx["prepared"], "--methods", "random", "--seeds", "0,²",
                            "--out", tmp_path / "cmp", fragments=("--seeds",))
    refused_writing_nothing(tmp_path, "compare", fx["prepared"], "--methods", "influence", "--score-args",
                            f"--seed {HUGE_SEED}", "--out", tmp_path / "cmp", fragments=("--score-args", "--seed"))


def test_surrogate_of_a_smaller_catalogue_is_refused_before_any_folder(tmp_path, fx):
    small, prepared = fx["small_surrogate"], fx["prepared"]
    fragments = (str(small), f"1..{N_ITEMS - 2}", f"up to {N_ITEMS}")
    refused_writing_nothing(tmp_path, "score", prepared, "--surrogate", small, "--out", tmp_path / "o",
                            "--target", "none", "--workers", "0", "--quiet", fragments=fragments)
    refused_writing_nothing(tmp_path, "prune", prepared, "--surrogate", small, "--out", tmp_path / "o",
                            "--n", "2", "--target", "none", "--workers", "0", "--quiet", fragments=fragments)
    refused_writing_nothing(tmp_path, "compare", prepared, "--surrogate", small, "--out", tmp_path / "o",
                            "--n", "2", "--methods", "influence", "--seeds", "0", "--workers", "0",
                            fragments=fragments)
    refused_writing_nothing(tmp_path, "select", "--method", "el2n", "--data", prepared, "--surrogate", small,
                            "--out", tmp_path / "o", "--n", "2", fragments=fragments)
    assert not (fx["root"] / "prepared" / "work").exists()


# ----------------------------------------------------------------------------- 3. real releases accepted

def test_release_users_without_training_items_are_accepted_and_counted(tmp_path):
    # user 11 has validation and test items but a training line with the user id alone
    src = write_release(tmp_path / "release", train="10 1 2 3\n11\n12 2 6 1 4\n13 5\n",
                        valid="10 5\n11 3\n12 3 3\n", test="10 4\n11 1 2\n12\n13 6\n")
    out = tmp_path / "prepared"
    result = run("prepare", src, "--out", out)
    assert result.exit_code == 0, result.output
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["users_without_training_items"] == 1
    assert counts["interactions_dropped_without_training"] == {"valid": 1, "test": 2}
    assert counts["samples"] == 3
    samples = pq.read_table(out / "samples").to_pylist()
    assert [(s["sample_id"], s["user"], s["history"], s["target"]) for s in samples] == [
        (0, 10, [1, 2], 3), (1, 12, [2, 6, 1], 4), (2, 13, [], 5)]
    assert pq.read_table(out / "eval" / "valid.parquet").column("user").to_pylist() == [10, 12]
    assert pq.read_table(out / "eval" / "test.parquet").column("user").to_pylist() == [10, 13]


def test_release_where_no_user_has_training_items_is_refused(tmp_path):
    src = write_release(tmp_path / "release", train="10\n11\n", valid="10 1\n11\n", test="10\n11 2\n")
    refused_writing_nothing(tmp_path, "prepare", src, "--out", tmp_path / "out",
                            fragments=("sequential_train.txt", "no user has a training item"))


# ----------------------------------------------------------------------------- 4. messages

def test_select_row_numbers_start_at_1_and_name_the_file(tmp_path, fx):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pq.write_table(pa.table({"sample_id": [0, 1, 2], "influence": [0.1, 0.2, float("nan")]}),
                   run_dir / "scores.parquet")
    line = refused_writing_nothing(tmp_path, "select", run_dir, "--method", "influence", "--data", fx["prepared"],
                                   "--n", "1", fragments=("scores.parquet", "row 3", "field 'influence'", "nan"))
    assert "row 2" not in line


def test_export_row_numbers_start_at_1_and_name_the_file(tmp_path, fx):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pq.write_table(pa.table({"sample_id": [0, 1, 2], "user": [10, 11, 12], "history": [[1], [2], [3]],
                             "target": [1, 2, 99]}), run_dir / "coreset.parquet")
    refused_writing_nothing(tmp_path, "export", run_dir, "--data", fx["prepared"],
                            fragments=("coreset.parquet", "row 3", "field 'target'", "item 99"))


def test_finetune_row_numbers_start_at_1_and_name_the_file(tmp_path, fx):
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"history": [[1], [2, 77]], "target": [2, 3]}), train)
    refused_writing_nothing(tmp_path, "finetune", "tiger", "--data", fx["prepared"], "--train", train,
                            "--out", tmp_path / "t", fragments=("train.parquet", "row 2", "field 'history'", "77"))
    pq.write_table(pa.table({"history": [[1], [2]], "target": [2, 99]}), train)
    refused_writing_nothing(tmp_path, "finetune", "tiger", "--data", fx["prepared"], "--train", train,
                            "--out", tmp_path / "t", fragments=("train.parquet", "row 2", "field 'target'", "99"))


def test_no_numpy_reprs_in_messages(tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1, 2, 3], "item": [1.0, 2.0, 2.5], "timestamp": [1, 2, 3]}), log)
    refused_writing_nothing(tmp_path, "prepare", log, "--out", tmp_path / "out",
                            fragments=("log.parquet", "row 3", "field 'item'", "id 2.5 is"))
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "timestamp": [1.0, float("inf")]}), log)
    refused_writing_nothing(tmp_path, "prepare", log, "--out", tmp_path / "out",
                            fragments=("log.parquet", "row 2", "field 'timestamp'", "timestamp inf is"))


def test_control_bytes_in_echoed_strings_are_escaped(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"user": "u1", "item": "a", "timestamp": 1}) + "\n"
                   + json.dumps({"user": "u1", "item": "x\x1b[31my\nz", "timestamp": 2}) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title\na,A\n")
    line = refused_writing_nothing(tmp_path, "prepare", log, "--out", tmp_path / "out", "--items", items,
                                   fragments=("log.jsonl", "line 2", "field 'item'", "x\\x1b[31my\\nz"))
    assert "\x1b" not in line
    # a path is echoed too: a newline or an escape in it stays one escaped line
    odd = tmp_path / "no\x1b[2Jsuch\nrun"
    line = refused_writing_nothing(tmp_path, "select", odd, fragments=("no\\x1b[2Jsuch\\nrun", "no such run folder"))
    assert "\x1b" not in line


def test_select_of_a_missing_run_folder_says_so(tmp_path):
    refused_writing_nothing(tmp_path, "select", tmp_path / "NOSUCHRUN",
                            fragments=(str(tmp_path / "NOSUCHRUN"), "no such run folder"))


def test_score_and_prune_check_their_options_before_creating_out(tmp_path, fx):
    from surrogates.base import save_surrogate
    from surrogates.registry import build_surrogate

    surrogate = tmp_path / "surrogate"
    surrogate.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=8),
                   surrogate)
    base = ["score", fx["prepared"], "--surrogate", surrogate, "--out", tmp_path / "o", "--quiet"]
    refused_writing_nothing(tmp_path, *base, "--target", "none", "--workers", "-1", fragments=("--workers", "-1"))
    refused_writing_nothing(tmp_path, *base, "--target", "none", "--batch-size", "0", fragments=("--batch-size",))
    refused_writing_nothing(tmp_path, *base, "--target", "bigrec", "--llm", tmp_path / "nollm", "--workers", "0",
                            fragments=(str(tmp_path / "nollm"), "--llm"))
    refused_writing_nothing(tmp_path, "prune", tmp_path / "nodata", "--out", tmp_path / "o",
                            fragments=(str(tmp_path / "nodata"), "no such file or folder"))
