"""``dealrec prepare``: round trips in every input format, the paper's split, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import PreparedData, sha256_file
from dealrec.prepare import PrepareOptions, prepare

GAMES = Path(__file__).parents[1].parent / "shared" / "data" / "games"

# Titles that must survive byte for byte: Chinese, emoji (outside the BMP), a combining accent,
# quotes and a tab; two items share a title on purpose.
TITLES = {1: "塞尔达传说 旷野之息", 2: "Game 🎮🕹️ Party", 3: "Cafe\u0301 \"quoted\"\tTab", 4: "Same Title",
          5: "Same Title"}


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def expect_error(result, *fragments):
    """A bad input: exit 2, one line on stderr naming what it must, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def rows(path):
    return pq.read_table(path).to_pylist()


# ----------------------------------------------------------------------------- release format

def write_release(folder: Path, train="", valid="", test="", items=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_train.txt").write_text(train, encoding="utf-8")
    (folder / "sequential_valid.txt").write_text(valid, encoding="utf-8")
    (folder / "sequential_test.txt").write_text(test, encoding="utf-8")
    if items is None:
        items = [{"item": i, "title": t, "source_id": f"ASIN{i}", "categories": ["Games", "PC"]}
                 for i, t in TITLES.items()]
    (folder / "items.jsonl").write_text(
        "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in items), encoding="utf-8")
    return folder


def good_release(tmp_path) -> Path:
    return write_release(
        tmp_path / "release",
        train="10 1 2 3\n11 4\n12 2 5 1 4\n",
        valid="10 5\n11\n12 3 3\n",     # user 11 has a user-only line: no validation interactions
        test="10 4\n11 1 2\n12\n",
    )


def test_release_round_trip(tmp_path):
    src = good_release(tmp_path)
    out = tmp_path / "prepared"
    result = run_cli("prepare", src, "--out", out)
    assert result.exit_code == 0, result.output

    assert rows(out / "samples" / "part-00000.parquet") == [
        {"sample_id": 0, "user": 10, "history": [1, 2], "target": 3},
        {"sample_id": 1, "user": 11, "history": [], "target": 4},
        {"sample_id": 2, "user": 12, "history": [2, 5, 1], "target": 4},
    ]
    assert rows(out / "eval" / "valid.parquet") == [
        {"user": 10, "history": [1, 2, 3], "targets": [5]},
        {"user": 12, "history": [2, 5, 1, 4], "targets": [3, 3]},
    ]
    # The test history is training followed by validation items.
    assert rows(out / "eval" / "test.parquet") == [
        {"user": 10, "history": [1, 2, 3, 5], "targets": [4]},
        {"user": 11, "history": [4], "targets": [1, 2]},
    ]
    items = pq.read_table(out / "items.parquet")
    assert items.schema.field("item").type == pa.int32()
    assert items.schema.field("categories").type == pa.list_(pa.string())
    assert items.column("item").to_pylist() == [1, 2, 3, 4, 5]
    assert items.column("title").to_pylist() == list(TITLES.values())   # unicode exact, duplicates kept
    assert items.column("source_id").to_pylist() == [f"ASIN{i}" for i in TITLES]

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    c = manifest["counts"]
    assert (c["users"], c["items"], c["samples"]) == (3, 5, 3)
    assert c["interactions"] == {"train": 8, "valid": 3, "test": 3}
    assert c["eval_users"] == {"valid": 2, "test": 2}
    assert (c["items_with_shared_title"], c["shared_titles"]) == (2, 1)
    assert c["samples_with_empty_history"] == 1
    hashes = {s["file"]: s["sha256"] for s in manifest["sources"]}
    assert hashes["items.jsonl"] == sha256_file(src / "items.jsonl")
    assert set(hashes) == {"sequential_train.txt", "sequential_valid.txt", "sequential_test.txt", "items.jsonl"}

    data = PreparedData(out)
    assert data.n_items == 5 and data.titles()[1:] == list(TITLES.values())
    assert len(data.eval_split("valid")) == 2


def test_release_items_without_categories_and_missing_eval_lines(tmp_path):
    # Valid/test files may leave users out altogether: no line means no interactions.
    src = write_release(tmp_path / "r", train="1 1 2\n2 2\n", valid="2 1\n", test="",
                        items=[{"item": 1, "title": "a"}, {"item": 2, "title": "b", "year": 1999}])
    (src / "sequential_test.txt").write_text("1\n2\n")
    out = tmp_path / "out"
    prepare(src, out)
    items = rows(out / "items.parquet")
    assert items == [{"item": 1, "title": "a", "categories": [], "year": None},
                     {"item": 2, "title": "b", "categories": [], "year": "1999"}]
    assert rows(out / "eval" / "valid.parquet") == [{"user": 2, "history": [2], "targets": [1]}]
    assert rows(out / "eval" / "test.parquet") == []


def test_shards_and_overwrite(tmp_path):
    src = good_release(tmp_path)
    out = tmp_path / "prepared"
    prepare(src, out, PrepareOptions(shard_size=2))
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    samples = PreparedData(out).samples()
    assert samples.sample_id.tolist() == [0, 1, 2] and samples.user.tolist() == [10, 11, 12]

    expect_error(run_cli("prepare", src, "--out", out), str(out), "--overwrite")
    assert run_cli("prepare", src, "--out", out, "--overwrite").exit_code == 0
    assert len(list((out / "samples").iterdir())) == 1


RELEASE_BAD = [
    # (name, files to write, fragments of the error)
    ("non-integer user", {"train": "1 1 2\nx7 1\n"}, ["sequential_train.txt", "line 2", "field 'user'", "'x7'"]),
    ("non-integer item", {"train": "1 1 2\n2 1 2.5\n"}, ["sequential_train.txt", "line 2", "field 'item'", "'2.5'"]),
    ("item id 0 (padding)", {"train": "1 0\n"}, ["sequential_train.txt", "line 1", "field 'item'"]),
    # one user with no training items is accepted (tests/test_reliability_inputs.py); all of them is no data
    ("no user with items", {"train": "1\n2\n"}, ["sequential_train.txt", "no user has a training item"]),
    ("user twice", {"train": "1 1\n1 2\n"}, ["sequential_train.txt", "line 2", "field 'user'", "twice"]),
    ("empty train", {"train": ""}, ["sequential_train.txt", "empty"]),
    ("blank test", {"test": "\n\n"}, ["sequential_test.txt", "empty"]),
    ("valid user not in train", {"valid": "1 1\n9 2\n"},
     ["sequential_valid.txt", "line 2", "field 'user'", "user 9", "sequential_train.txt"]),
    ("test item unknown", {"test": "1 3\n2 99\n"},
     ["sequential_test.txt", "line 2", "field 'item'", "item 99", "items.jsonl"]),
    ("train item unknown", {"train": "1 1 2\n2 3 77\n"}, ["sequential_train.txt", "line 2", "field 'item'", "77"]),
    ("empty items", {"items": ""}, ["items.jsonl", "empty"]),
    ("bad JSON", {"items": '{"item": 1, "title": "a"}\n{"item": 2, "title": \n'}, ["items.jsonl", "line 2", "JSON"]),
    ("string item id", {"items": '{"item": "1", "title": "a"}\n'}, ["items.jsonl", "line 1", "field 'item'"]),
    ("no title", {"items": '{"item": 1, "title": "a"}\n{"item": 2}\n'}, ["items.jsonl", "line 2", "field 'title'"]),
    ("duplicate item", {"items": '{"item": 1, "title": "a"}\n{"item": 1, "title": "b"}\n'},
     ["items.jsonl", "line 2", "field 'item'", "twice"]),
    ("bad utf-8", {"train_bytes": b"1 1\n2 \xff\n"}, ["sequential_train.txt", "line 2", "UTF-8"]),
]


@pytest.mark.parametrize("name,files,fragments", RELEASE_BAD, ids=[c[0] for c in RELEASE_BAD])
def test_release_bad_input(tmp_path, name, files, fragments):
    src = write_release(tmp_path / "release", train="1 1 2\n2 2 3\n", valid="1 3\n2\n", test="1\n2 1\n",
                        items=[{"item": i, "title": f"t{i}"} for i in (1, 2, 3)])
    for key, text in files.items():
        if key == "train_bytes":
            (src / "sequential_train.txt").write_bytes(text)
        elif key == "items":
            (src / "items.jsonl").write_text(text, encoding="utf-8")
        else:
            (src / f"sequential_{key}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "prepared"
    expect_error(run_cli("prepare", src, "--out", out), *fragments)
    assert_nothing_written(out)


def test_release_missing_file(tmp_path):
    src = good_release(tmp_path)
    (src / "sequential_valid.txt").unlink()
    out = tmp_path / "prepared"
    expect_error(run_cli("prepare", src, "--out", out), "sequential_valid.txt", "missing")
    assert_nothing_written(out)


def test_log_options_refused_for_release(tmp_path):
    out = tmp_path / "prepared"
    expect_error(run_cli("prepare", good_release(tmp_path), "--out", out, "--min-rating", "4"), "--min-rating")
    assert_nothing_written(out)


def test_log_options_given_compares_with_the_defaults():
    """What a release folder refuses: each log-only option that differs from PrepareOptions' own default
    (the command's defaults are those, so a release prepared with no option set passes)."""
    assert PrepareOptions().log_options_given() == []
    assert PrepareOptions(split=[0.8, 0.1, 0.1], shard_size=7).log_options_given() == []
    changed = PrepareOptions(min_rating=4.0, min_user_count=2, min_item_count=3, split=(0.6, 0.2, 0.2),
                             items_file="items.csv")
    assert changed.log_options_given() == ["--min-rating", "--min-user-count", "--min-item-count", "--split",
                                           "--items"]
    assert PrepareOptions(min_item_count=5).log_options_given() == ["--min-item-count"]


def test_error_keeps_previous_output(tmp_path):
    src = good_release(tmp_path)
    out = tmp_path / "prepared"
    prepare(src, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (src / "sequential_test.txt").write_text("10 1\n99 2\n")
    expect_error(run_cli("prepare", src, "--out", out, "--overwrite"), "sequential_test.txt", "line 2")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared.")]


# ----------------------------------------------------------------------------- interaction logs

# A hand-made log, rows out of time order, with a timestamp tie (rows 'c' and 'd' at t=30).
# Sorted by time (ties in file order): 10 20 30(c) 30(d) 40 50 60 70 | 80 | 90
# with 10 interactions, the 8:1:1 cut puts the first 8 in training, the 9th in validation.
LOG = [
    # user,  item, timestamp, rating
    ("bob", "i2", 30, 5.0),     # c
    ("ann", "i1", 10, 4.0),
    ("ann", "i2", 20, 5.0),
    ("cat", "i3", 30, 4.0),     # d
    ("bob", "i1", 40, 5.0),
    ("ann", "i3", 60, 3.0),
    ("ann", "i4", 50, 4.0),
    ("cat", "i1", 70, 5.0),
    ("bob", "i4", 90, 4.0),     # test
    ("ann", "i2", 80, 4.0),     # valid
]
# Users in order of first appearance in time: ann(10) bob(30c) cat(30d); items: i1 i2 i3 i4.
EXPECTED_SAMPLES = [
    {"sample_id": 0, "user": 1, "history": [1, 2, 4], "target": 3},   # ann: i1 i2 i4(50) i3(60)
    {"sample_id": 1, "user": 2, "history": [2], "target": 1},         # bob: i2 i1
    {"sample_id": 2, "user": 3, "history": [3], "target": 1},         # cat: i3 i1
]
EXPECTED_VALID = [{"user": 1, "history": [1, 2, 4, 3], "targets": [2]}]
EXPECTED_TEST = [{"user": 2, "history": [2, 1], "targets": [4]}]


def log_table(log=LOG) -> pa.Table:
    user, item, ts, rating = zip(*log)
    return pa.table({"user": list(user), "item": list(item), "timestamp": list(ts), "rating": list(rating)})


def write_log(path: Path, table: pa.Table) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()),
                        encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_log_round_trip(tmp_path, suffix):
    log = write_log(tmp_path / f"log{suffix}", log_table())
    out = tmp_path / "prepared"
    result = run_cli("prepare", log, "--out", out)
    assert result.exit_code == 0, result.output
    assert rows(out / "samples" / "part-00000.parquet") == EXPECTED_SAMPLES
    assert rows(out / "eval" / "valid.parquet") == EXPECTED_VALID
    assert rows(out / "eval" / "test.parquet") == EXPECTED_TEST
    assert rows(out / "users.parquet") == [{"user": 1, "source_id": "ann"}, {"user": 2, "source_id": "bob"},
                                           {"user": 3, "source_id": "cat"}]
    assert rows(out / "items.parquet") == [
        {"item": i, "title": f"i{i}", "categories": [], "source_id": f"i{i}"} for i in (1, 2, 3, 4)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == f"log-{suffix[1:]}"
    assert manifest["counts"]["interactions"] == {"train": 8, "valid": 1, "test": 1}
    assert manifest["sources"][0]["sha256"] == sha256_file(log)
    assert any("original id" in note for note in manifest["notes"])


def test_log_integer_ids_and_first_appearance(tmp_path):
    table = log_table()
    names = {"ann": 700, "bob": 5, "cat": 42}
    table = table.set_column(0, "user", pa.array([names[u] for u in table.column("user").to_pylist()]))
    table = table.set_column(1, "item", pa.array([int(i[1:]) * 100 for i in table.column("item").to_pylist()]))
    out = tmp_path / "prepared"
    prepare(write_log(tmp_path / "log.parquet", table), out)
    assert rows(out / "samples" / "part-00000.parquet") == EXPECTED_SAMPLES
    assert rows(out / "users.parquet") == [{"user": 1, "source_id": 700}, {"user": 2, "source_id": 5},
                                           {"user": 3, "source_id": 42}]
    items = pq.read_table(out / "items.parquet")
    assert items.column("source_id").to_pylist() == [100, 200, 300, 400]
    assert items.column("title").to_pylist() == ["100", "200", "300", "400"]


def test_global_split_other_fractions_and_dropped_users(tmp_path):
    # 0.5,0.2,0.3 of 10: training = first 5 in time (ann i1 i2, bob i2, cat i3, bob i1);
    # validation = next 2 (ann i4 @50, ann i3 @60); test = last 3 (cat i1 @70, ann i2 @80, bob i4 @90).
    # A fourth user whose only interaction is in the test period has no sample: dropped everywhere.
    log = write_log(tmp_path / "log.csv", log_table(LOG + [("dan", "i9", 95, 5.0)]))
    out = tmp_path / "prepared"
    manifest = prepare(log, out, PrepareOptions(split=(0.5, 0.2, 0.3)))
    # 11 rows: cuts at floor(5.5) = 5 and floor(7.7) = 7.
    assert rows(out / "samples" / "part-00000.parquet") == [
        {"sample_id": 0, "user": 1, "history": [1], "target": 2},
        {"sample_id": 1, "user": 2, "history": [2], "target": 1},
        {"sample_id": 2, "user": 3, "history": [], "target": 3},
    ]
    assert rows(out / "eval" / "valid.parquet") == [{"user": 1, "history": [1, 2], "targets": [4, 3]}]
    assert rows(out / "eval" / "test.parquet") == [
        {"user": 1, "history": [1, 2, 4, 3], "targets": [2]},
        {"user": 2, "history": [2, 1], "targets": [4]},
        {"user": 3, "history": [3], "targets": [1]},
    ]
    c = manifest["counts"]
    assert c["users_dropped_without_training"] == 1
    assert c["interactions_dropped_without_training"] == {"train": 0, "valid": 0, "test": 1}
    assert c["items"] == 4 and "users.parquet" in {p.name for p in out.iterdir()}


def test_min_rating_and_iterative_k_core(tmp_path):
    # Rating >= 4 drops ann-i3 (3.0) and fay-i9 (1.0). 2-core, round 1: dan (one row), cat-i3
    # (i3 now has one row) and eve-i9 go. Round 2: cat and eve are left with one row each (i1).
    # Then ann (4 rows) and bob (3) remain, and i1, i2, i4 each have at least 2: stop.
    extra = [("dan", "i5", 1, 5.0), ("eve", "i9", 2, 5.0), ("eve", "i1", 3, 5.0), ("fay", "i9", 4, 1.0)]
    log = write_log(tmp_path / "log.jsonl", log_table(LOG + extra))
    out = tmp_path / "prepared"
    manifest = prepare(log, out, PrepareOptions(min_rating=4.0, min_user_count=2, min_item_count=2))
    c = manifest["counts"]
    assert (c["log_rows"], c["rows_after_min_rating"], c["rows_after_k_core"], c["k_core_rounds"]) == (14, 12, 7, 2)
    # 7 rows in time: ann i1 10, ann i2 20, bob i2 30, bob i1 40, ann i4 50 | ann i2 80 | bob i4 90.
    assert rows(out / "users.parquet") == [{"user": 1, "source_id": "ann"}, {"user": 2, "source_id": "bob"}]
    assert pq.read_table(out / "items.parquet").column("source_id").to_pylist() == ["i1", "i2", "i4"]
    assert rows(out / "samples" / "part-00000.parquet") == [
        {"sample_id": 0, "user": 1, "history": [1, 2], "target": 3},
        {"sample_id": 1, "user": 2, "history": [2], "target": 1},
    ]
    assert rows(out / "eval" / "valid.parquet") == [{"user": 1, "history": [1, 2, 3], "targets": [2]}]
    assert rows(out / "eval" / "test.parquet") == [{"user": 2, "history": [2, 1], "targets": [3]}]
    assert manifest["options"]["min_rating"] == 4.0 and manifest["options"]["min_user_count"] == 2


def test_log_with_items_file(tmp_path):
    log = write_log(tmp_path / "log.parquet", log_table())
    catalogue = pa.table({
        "item": ["i4", "i3", "i2", "i1", "unused"],
        "title": ["Delta 🎲", "同名", "同名", "Alpha", "x"],
        "categories": [["a", "b"], None, [], ["c"], []],
        "year": [2001, None, 2003, 2004, 2005],
        "source_id": ["B4", "B3", "B2", "B1", "B0"],
    })
    items_path = tmp_path / "items.parquet"
    pq.write_table(catalogue, items_path)
    out = tmp_path / "prepared"
    result = run_cli("prepare", log, "--out", out, "--items", items_path)
    assert result.exit_code == 0, result.output
    assert rows(out / "items.parquet") == [
        {"item": 1, "title": "Alpha", "categories": ["c"], "source_id": "i1", "year": "2004",
         "catalogue_source_id": "B1"},
        {"item": 2, "title": "同名", "categories": [], "source_id": "i2", "year": "2003",
         "catalogue_source_id": "B2"},
        {"item": 3, "title": "同名", "categories": [], "source_id": "i3", "year": None,
         "catalogue_source_id": "B3"},
        {"item": 4, "title": "Delta 🎲", "categories": ["a", "b"], "source_id": "i4", "year": "2001",
         "catalogue_source_id": "B4"},
    ]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["catalogue_items_unused"] == 1
    assert manifest["counts"]["items_with_shared_title"] == 2
    assert [s["file"] for s in manifest["sources"]] == ["log.parquet", "items.parquet"]


def test_items_file_csv_and_jsonl(tmp_path):
    log = write_log(tmp_path / "log.csv", log_table())
    (tmp_path / "items.csv").write_text(
        'item,title,categories\ni1,"A, with comma",\ni2,B,"[""x"", ""y""]"\ni3,C 中文,z\ni4,D,\n', encoding="utf-8")
    out = tmp_path / "a"
    prepare(log, out, PrepareOptions(items_file=str(tmp_path / "items.csv")))
    got = rows(out / "items.parquet")
    assert [r["title"] for r in got] == ["A, with comma", "B", "C 中文", "D"]
    assert [r["categories"] for r in got] == [[], ["x", "y"], ["z"], []]

    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"item": f"i{i}", "title": f"T{i} ✓"}, ensure_ascii=False) + "\n" for i in (4, 3, 2, 1)),
        encoding="utf-8")
    out = tmp_path / "b"
    prepare(log, out, PrepareOptions(items_file=str(tmp_path / "items.jsonl")))
    assert [r["title"] for r in rows(out / "items.parquet")] == [f"T{i} ✓" for i in (1, 2, 3, 4)]


LOG_BAD = [
    # (name, file name, content, extra args, fragments)
    ("csv missing column", "log.csv", "user,item,rating\n1,2,5\n", [], ["log.csv", "field 'timestamp'", "missing column"]),
    ("jsonl missing column", "log.jsonl", '{"user": 1, "timestamp": 5}\n', [], ["log.jsonl", "field 'item'"]),
    ("csv non-numeric timestamp", "log.csv", "user,item,timestamp\n1,2,5\n1,3,yesterday\n", [],
     ["log.csv", "row 2", "field 'timestamp'", "yesterday"]),
    ("jsonl non-numeric rating", "log.jsonl",
     '{"user": 1, "item": 2, "timestamp": 5, "rating": 4}\n\n{"user": 1, "item": 3, "timestamp": 6, "rating": "good"}\n',
     [], ["log.jsonl", "line 3", "field 'rating'", "good"]),
    ("jsonl fractional item id", "log.jsonl",
     '{"user": 1, "item": 2, "timestamp": 5}\n{"user": 1, "item": 2.5, "timestamp": 6}\n', [],
     ["log.jsonl", "line 2", "field 'item'", "not an integer"]),
    ("jsonl mixed id types", "log.jsonl",
     '{"user": 1, "item": 2, "timestamp": 5}\n{"user": "1", "item": 3, "timestamp": 6}\n', [],
     ["log.jsonl", "line 2", "field 'user'"]),
    ("jsonl bad json", "log.jsonl", '{"user": 1, "item": 2, "timestamp": 5}\n{"user": 1,\n', [],
     ["log.jsonl", "line 2", "JSON"]),
    ("csv missing user", "log.csv", "user,item,timestamp\n1,2,5\n,3,6\n", [], ["log.csv", "row 2", "field 'user'"]),
    ("empty csv", "log.csv", "", [], ["log.csv", "empty"]),
    ("header-only csv", "log.csv", "user,item,timestamp\n", [], ["log.csv", "no rows"]),
    ("empty jsonl", "log.jsonl", "\n", [], ["log.jsonl", "empty"]),
    ("min-rating without rating", "log.csv", "user,item,timestamp\n1,2,5\n", ["--min-rating", "4"],
     ["log.csv", "field 'rating'"]),
    ("unknown suffix", "log.txt", "user item timestamp\n", [], ["log.txt", "unknown file type"]),
]


@pytest.mark.parametrize("name,fname,content,args,fragments", LOG_BAD, ids=[c[0] for c in LOG_BAD])
def test_log_bad_input(tmp_path, name, fname, content, args, fragments):
    path = tmp_path / fname
    path.write_text(content, encoding="utf-8")
    out = tmp_path / "prepared"
    expect_error(run_cli("prepare", path, "--out", out, *args), *fragments)
    assert_nothing_written(out)


def test_parquet_bad_rows(tmp_path):
    out = tmp_path / "prepared"
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1, 2, 3], "item": [1.0, 2.0, 2.5], "timestamp": [1, 2, 3]}), path)
    expect_error(run_cli("prepare", path, "--out", out), "log.parquet", "row 3", "field 'item'")
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "timestamp": [1.0, float("nan")]}), path)
    expect_error(run_cli("prepare", path, "--out", out), "log.parquet", "row 2", "field 'timestamp'")
    pq.write_table(pa.table({"user": [1, None], "item": [1, 2], "timestamp": [1, 2]}), path)
    expect_error(run_cli("prepare", path, "--out", out), "log.parquet", "row 2", "field 'user'")
    assert_nothing_written(out)


def test_items_file_bad_input(tmp_path):
    log = write_log(tmp_path / "log.csv", log_table())
    out = tmp_path / "prepared"
    items = tmp_path / "items.csv"
    # An item of the log that the item list does not know: the log's row is named.
    items.write_text("item,title\ni1,a\ni2,b\ni3,c\n")
    expect_error(run_cli("prepare", log, "--out", out, "--items", items), "log.csv", "row 7", "field 'item'", "i4")
    items.write_text("item,title\ni1,a\ni2,b\ni3,c\ni4,d\ni2,again\n")
    expect_error(run_cli("prepare", log, "--out", out, "--items", items), "items.csv", "row 5", "field 'item'")
    items.write_text("name,title\ni1,a\n")
    expect_error(run_cli("prepare", log, "--out", out, "--items", items), "items.csv", "field 'item'")
    items.write_text("item,title\ni1,a\ni2,b\ni3,c\ni4,\n")
    # An empty title in CSV is text "", not missing; a JSONL null title is missing.
    assert run_cli("prepare", log, "--out", out, "--items", items).exit_code == 0
    jl = tmp_path / "items.jsonl"
    jl.write_text('{"item": "i1", "title": "a"}\n{"item": "i2", "title": null}\n')
    out2 = tmp_path / "prepared2"
    expect_error(run_cli("prepare", log, "--out", out2, "--items", jl), "items.jsonl", "line 2", "field 'title'")
    assert_nothing_written(out2)


def test_split_option_validated(tmp_path):
    log = write_log(tmp_path / "log.csv", log_table())
    out = tmp_path / "prepared"
    result = run_cli("prepare", log, "--out", out, "--split", "0.8,0.1,0.2")
    assert result.exit_code == 2 and "sum to 1" in result.output
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- the real data

@pytest.mark.skipif(not GAMES.is_dir(), reason=f"the Games release is not at {GAMES}")
def test_real_games_release(tmp_path):
    """The counts of the data README: 49,156 samples, 17,332 items, 9,609 / 8,696 eval users."""
    manifest = prepare(GAMES, tmp_path / "games")
    c = manifest["counts"]
    assert (c["samples"], c["items"], c["n_items"]) == (49156, 17332, 17332)
    assert c["interactions"]["train"] == 299987
    assert c["interactions"]["test"] == 19733
    assert c["eval_users"] == {"valid": 9609, "test": 8696}
    assert c["samples_with_empty_history"] == 3382
    assert c["items_with_shared_title"] == 814
    data = PreparedData(tmp_path / "games")
    samples = data.samples()
    assert len(samples) == 49156 and samples.sample_id.tolist() == list(range(49156))
    first = (GAMES / "sequential_train.txt").read_text().split("\n", 1)[0].split()
    assert samples.user[0] == int(first[0])
    assert samples.sequences()[0].tolist() == [int(x) for x in first[1:]]
