"""``prepare`` of logs larger than memory (issue 11): the synthetic log generator, and the out-of-core
path (``dealrec.prepare.stream`` + ``split``) checked byte for byte against an in-memory reference of
docs/data.md's steps, with chunks small enough that every log here spans many of them."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dealrec.prepare.split as split
import dealrec.prepare.stream as stream
from dealrec.cli import main
from dealrec.prepare import PreparedInMemory, PrepareOptions, prepare, write_prepared
from benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


synth = load_benchmark("synth_log")


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows, so that a log of a few thousand spans hundreds of them."""
    monkeypatch.setattr(stream, "CHUNK_ROWS", 97)
    monkeypatch.setattr(stream, "JSONL_CHUNK_LINES", 61)
    monkeypatch.setattr(stream, "CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr(split, "FETCH_ROWS", 50)
    monkeypatch.setattr(split, "TIME_BUCKETS", 7)


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the generator

def test_synthetic_log_is_seeded_and_looks_like_a_log(tmp_path):
    kinds = {}
    for fmt in ("parquet", "csv", "jsonl"):
        a = synth.generate(4000, tmp_path / f"a.{fmt}", seed=3)
        b = synth.generate(4000, tmp_path / f"b.{fmt}", seed=3)
        for key in ("log", "items_file"):
            assert Path(a[key]).read_bytes() == Path(b[key]).read_bytes()        # same seed, same bytes
        kinds[fmt] = a
    c = synth.generate(4000, tmp_path / "c.parquet", seed=4)
    assert Path(c["log"]).read_bytes() != Path(kinds["parquet"]["log"]).read_bytes()
    table = pq.read_table(kinds["parquet"]["log"])
    assert table.num_rows == 4000 and table.column_names == ["user", "item", "timestamp", "rating"]
    # the three formats hold the same log
    csv = pacsv.read_csv(kinds["csv"]["log"], convert_options=pacsv.ConvertOptions(
        column_types={"user": pa.string(), "item": pa.string(), "rating": pa.float64()}))
    assert csv.equals(table)
    jsonl = [json.loads(line) for line in Path(kinds["jsonl"]["log"]).read_text().splitlines()]
    assert [(r["user"], r["item"], r["timestamp"], float(r["rating"])) for r in jsonl] == \
        list(zip(*(table.column(c).to_pylist() for c in table.column_names)))

    users = pc.value_counts(table.column("user")).field("counts").to_numpy()
    items = np.sort(pc.value_counts(table.column("item")).field("counts").to_numpy())[::-1]
    assert len(users) == 400 and users.min() >= 1                  # every user has an interaction
    assert users.max() > 10 * np.median(users)                      # heavy-tailed activity
    assert items[:len(items) // 10].sum() > 0.4 * items.sum()       # Zipf: a tenth of the items, most plays
    ts = table.column("timestamp").to_numpy()
    assert synth.START <= ts.min() and ts.max() <= synth.START + 4 * 365.25 * 86400
    catalogue = pq.read_table(kinds["parquet"]["items_file"])
    assert set(table.column("item").to_pylist()) <= set(catalogue.column("item").to_pylist())
    titles = catalogue.column("title").to_pylist()
    assert all(titles) and len(set(titles)) < len(titles)             # some titles are shared
    assert all(1 <= len(c) <= 3 for c in catalogue.column("categories").to_pylist())


def test_synthetic_log_is_written_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "CHUNK_ROWS", 500)
    out = synth.generate(4000, tmp_path / "log.parquet", seed=1, tick=86400, id_type="int")
    parquet = pq.ParquetFile(out["log"])
    assert parquet.metadata.num_rows == 4000 and parquet.metadata.num_row_groups > 4
    for k in range(parquet.metadata.num_row_groups):     # a chunk: whole users, 500 rows at most (or one user)
        users = parquet.read_row_group(k).column("user")
        assert len(users) <= 500 or len(pc.unique(users)) == 1
    ts = pq.read_table(out["log"]).column("timestamp").to_numpy()
    assert np.all(ts % 86400 == 0) and len(np.unique(ts)) < len(ts) // 2   # day resolution: many ties


# ----------------------------------------------------------------------------- the in-memory reference

def reference_prepare(path: Path, out: Path, options: PrepareOptions) -> dict:
    """docs/data.md's steps on the whole log in memory (numpy), written by ``write_prepared``: the
    definition the out-of-core path must match byte for byte (for logs as clean as the generator's)."""
    kind = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}[path.suffix]
    if kind == "parquet":
        table = pq.read_table(path)
    elif kind == "csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"user": pa.string(), "item": pa.string()}))
    else:
        table = pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    user, item = (table.column(c).combine_chunks() for c in ("user", "item"))
    ts = table.column("timestamp").to_numpy()
    rating = table.column("rating").to_numpy().astype(np.float64)
    counts = {"log_rows": table.num_rows}
    rows = np.arange(table.num_rows)
    if options.min_rating is not None:
        rows = rows[rating >= options.min_rating]
        counts["rows_after_min_rating"] = len(rows)
    codes = [pc.dictionary_encode(a).indices.to_numpy() for a in (user, item)]
    rounds = 0
    while len(rows):
        ok = np.ones(len(rows), bool)
        for c, least in zip(codes, (options.min_user_count, options.min_item_count)):
            ok &= np.bincount(c[rows])[c[rows]] >= least
        if ok.all():
            break
        rows, rounds = rows[ok], rounds + 1
    counts.update(rows_after_k_core=len(rows), k_core_rounds=rounds)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    n = len(rows)
    period = np.zeros(n, int)
    period[int(math.floor(n * options.split[0] + 1e-9)):] = 1
    period[int(math.floor(n * (options.split[0] + options.split[1]) + 1e-9)):] = 2
    trained = np.isin(codes[0][rows], codes[0][rows][period == 0])
    counts["users_dropped_without_training"] = len(np.unique(codes[0][rows][~trained]))
    counts["interactions_dropped_without_training"] = {
        name: int(np.sum(~trained & (period == p))) for p, name in enumerate(("train", "valid", "test"))}
    rows, period = rows[trained], period[trained]
    uid, iid = (pc.dictionary_encode(a.take(pa.array(rows))) for a in (user, item))
    n_users = len(uid.dictionary)
    seqs = [[[] for _ in range(n_users)] for _ in range(3)]
    for u, i, p in zip(uid.indices.to_numpy(), iid.indices.to_numpy() + 1, period):
        seqs[p][u].append(i)
    notes: list = []
    items = split.items_table(iid.dictionary, options, counts, notes, unknown_item=None)
    p = PreparedInMemory(users=np.arange(1, n_users + 1), train=[np.array(s, np.int32) for s in seqs[0]],
                         valid=[np.array(s, np.int32) for s in seqs[1]], test=[np.array(s, np.int32) for s in seqs[2]],
                         items=items, user_table=pa.table({"user": pa.array(np.arange(1, n_users + 1)),
                                                           "source_id": uid.dictionary}),
                         sources=[path] + ([Path(options.items_file)] if options.items_file else []),
                         counts=counts, notes=notes)
    return write_prepared(p, out, f"log-{kind}", options, overwrite=False)


OPTIONS = [
    {},
    {"min_rating": 4.0, "min_user_count": 3, "min_item_count": 2, "split": (0.7, 0.1, 0.2), "shard_size": 37},
]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("opts", range(len(OPTIONS)), ids=["defaults", "filtered"])
def test_out_of_core_prepare_matches_the_in_memory_definition(tmp_path, small_chunks, fmt, opts):
    """A generated log of 3,000 interactions (day-resolution times: many ties), in each format, with
    and without its catalogue: the same bytes in every file and the same manifest."""
    log = synth.generate(3000, tmp_path / f"log.{fmt}", seed=7, tick=86400)
    for with_items in (False, True):
        options = PrepareOptions(**OPTIONS[opts], items_file=log["items_file"] if with_items else None)
        got, want = tmp_path / f"got{with_items}", tmp_path / f"want{with_items}"
        manifest = prepare(log["log"], got, options)
        assert manifest == reference_prepare(Path(log["log"]), want, options)
        assert files(got) == files(want)
        assert manifest["counts"]["samples"] > 100 and manifest["counts"]["eval_users"]["test"] > 10
        shards = [name for name in files(got) if name.startswith("samples/")]
        assert len(shards) == math.ceil(manifest["counts"]["samples"] / options.shard_size)


def test_a_run_over_a_big_chunk_size_gives_the_same_folder(tmp_path, small_chunks, monkeypatch):
    """Chunk sizes change how the log is read, never what is written."""
    log = synth.generate(2000, tmp_path / "log.jsonl", seed=2, id_type="int")
    prepare(log["log"], tmp_path / "small")
    for module, name, value in ((stream, "JSONL_CHUNK_LINES", 1 << 16), (split, "FETCH_ROWS", 1 << 20)):
        monkeypatch.setattr(module, name, value)
    prepare(log["log"], tmp_path / "big")
    assert files(tmp_path / "small") == files(tmp_path / "big")


# ----------------------------------------------------------------------------- whole-file semantics, chunk by chunk

def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_errors_across_chunks_come_in_the_whole_file_order(tmp_path, small_chunks, monkeypatch):
    """Reading the whole file checked the users, then the items, then the timestamps, each its first
    bad row: a missing user far down beats a fractional item near the top; a second bad row of the
    same kind further down never wins over the first."""
    monkeypatch.setattr(stream, "CHUNK_ROWS", 3)
    n = 20
    user = list(range(n))
    item = [float(i % 4) for i in range(n)]
    item[1] = 2.5
    ts = list(range(n))
    user[14], user[17] = None, None
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": pa.array(user, pa.int64()), "item": item, "timestamp": ts}), path)
    line = error_line(run_cli("prepare", path, "--out", tmp_path / "o"))
    assert "row 15, field 'user': missing user id" in line
    user[14] = user[17] = 5
    pq.write_table(pa.table({"user": pa.array(user, pa.int64()), "item": item, "timestamp": ts}), path)
    assert "row 2, field 'item': item id 2.5 is not an integer" in error_line(
        run_cli("prepare", path, "--out", tmp_path / "o"))

    # JSONL: the key's type comes from the whole file: integers up top, a string id far down
    rows = [{"user": i, "item": "a", "timestamp": i} for i in range(n)]
    rows[16]["user"] = "u16"
    rows[18]["item"] = True
    jl = tmp_path / "log.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = error_line(run_cli("prepare", jl, "--out", tmp_path / "o"))
    assert "line 17, field 'user': user ids mix numbers and strings ('u16' here, number before)" in line
    # a rating that is text far down makes the whole column text: a later non-number is named
    rows[16]["user"], rows[18]["item"] = 16, "a"
    for r in rows:
        r["rating"] = 4
    rows[13]["rating"], rows[19]["rating"] = "5", "good"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "line 20, field 'rating': rating 'good' is not a number" in error_line(
        run_cli("prepare", jl, "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_a_text_timestamp_column_is_integers_only_if_every_chunk_is(tmp_path, small_chunks, monkeypatch):
    """Text timestamps: integers if Arrow casts every value to int64 (then a huge epoch keeps its
    precision), else floats; chunk by chunk the same as at once."""
    monkeypatch.setattr(stream, "CHUNK_ROWS", 4)
    big = 2**62
    ts = [str(big + k) for k in (5, 3, 1, 4, 2, 0, 6, 7, 9, 8)]
    table = pa.table({"user": [1] * 5 + [2] * 5, "item": list(range(10)), "timestamp": ts})
    pq.write_table(table, tmp_path / "log.parquet")
    prepare(tmp_path / "log.parquet", tmp_path / "int", PrepareOptions(split=(0.6, 0.2, 0.2)))
    # exact integers (as floats the ten times are one, and file order would decide): user 2 comes
    # first (time +0), user 1's items in time order are 2, 4, 1, 3, 0 -> new ids 2, 3, 4, 5, 6
    assert pq.read_table(tmp_path / "int" / "samples").column("history").to_pylist() == [[], [2, 3, 4, 5]]
    staged = stream.stage_log(tmp_path / "log.parquet", tmp_path)
    assert staged.ts == "ts_int"
    ts[9] = "1.5"          # one float, in the last chunk: the column is float64, as a whole-file read makes it
    pq.write_table(table.set_column(2, "timestamp", pa.array(ts)), tmp_path / "log.parquet")
    assert stream.stage_log(tmp_path / "log.parquet", tmp_path).ts == "ts"


# Pairs of (the first block's values, a later block's values) for a CSV column, each a case where
# Arrow's inference moves on after the first block.
CSV_TYPE_CASES = [(["", ""], ["1", "2"]), (["1", "0"], ["true"]), (["1", "2"], ["2.5"]), (["1"], ["2020-01-01"]),
                  (["2020-01-01"], ["2020-01-01 10:00:00"]), (["12:00:00"], ["2020-01-01"]), (["true"], ["1.5"]),
                  (["2020-01-01 10:00:00"], ["2020-01-01 10:00:00.123456789"]),
                  (["2020-01-01T10:00:00Z"], ["2020-01-01T10:00:00.5Z"]),
                  (["2020-01-01T10:00:00Z"], ["2020-01-01T10:00:00"]), (["1.5"], ["x"]), (["x"], [b"\xff"])]


@pytest.mark.parametrize("first,later", CSV_TYPE_CASES, ids=[f"{a[0]!r}-{b[0]!r}" for a, b in CSV_TYPE_CASES])
def test_csv_column_types_follow_arrows_whole_file_inference(tmp_path, first, later):
    """``stream.CSV_INFERENCE_ORDER`` is pyarrow's: the type found after a later block does not fit the
    first block's is the one ``read_csv`` infers for the whole file."""
    block = 1 << 12
    def cell(v):
        return v if isinstance(v, bytes) else v.encode()
    body = b"".join(b"u,i," + cell(first[k % len(first)]) + b"\n" for k in range(block // 4))
    body += b"".join(b"u,i," + cell(v) + b"\n" for v in later)
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item,timestamp\n" + body)
    whole = pacsv.read_csv(path, convert_options=stream._csv_options()).schema.field("timestamp").type
    first_block = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block),
                                 convert_options=stream._csv_options()).schema.field("timestamp").type
    assert first_block != whole
    assert stream._csv_column_type(path, "timestamp", first_block) == whole


def test_a_csv_whose_rating_turns_fractional_late_matches_the_reference(tmp_path, small_chunks):
    """Whole-number ratings for many blocks, then a 4.5: Arrow infers float64 for the file, the streamed
    read retypes the column, and the result is the reference's."""
    log = synth.generate(3000, tmp_path / "log.csv", seed=5, write_items=False)
    text = Path(log["log"]).read_text().splitlines()
    text[-1] = ",".join(text[-1].split(",")[:3] + ["4.5"])
    Path(log["log"]).write_text("\n".join(text) + "\n")
    options = PrepareOptions(min_rating=4.5)
    manifest = prepare(log["log"], tmp_path / "got", options)
    assert manifest == reference_prepare(Path(log["log"]), tmp_path / "want", options)
    assert files(tmp_path / "got") == files(tmp_path / "want")


def test_a_csv_column_that_fits_keeps_its_type_when_another_one_changes(tmp_path, monkeypatch):
    """The ratings turn fractional late; the timestamps (fractional from the first block on) keep
    float64, so an empty one is missing (a null), not the text '' that is no number."""
    monkeypatch.setattr(stream, "CSV_BLOCK_BYTES", 256)
    rows = [f"u{k % 5},i{k % 7},{k}.5,{k % 5 + 1}" for k in range(60)]
    rows[40] = "u1,i2,,3"
    rows[50] = "u1,i2,7.5,4.5"
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp,rating\n" + "\n".join(rows) + "\n")
    assert "row 41, field 'timestamp': missing timestamp" in error_line(run_cli("prepare", path, "--out",
                                                                                tmp_path / "o"))


@pytest.mark.parametrize("kind", ["int", "float", "one time", "huge ints"])
def test_the_rows_at_the_cuts_are_found_by_counting(monkeypatch, kind):
    """``split._rows_at`` (time ranges, then timestamps, then blocks of pos) against a sort."""
    import duckdb

    monkeypatch.setattr(split, "FETCH_ROWS", 7)
    monkeypatch.setattr(split, "TIME_BUCKETS", 5)
    rng = np.random.default_rng(0)
    n = 300
    ts = {"int": rng.integers(0, 50, n), "float": rng.random(n) * 10 - 5, "one time": np.zeros(n, np.int64),
          "huge ints": rng.choice([-2**63, 2**63 - 1, 0, 5], n)}[kind]
    con = duckdb.connect()
    con.register("src", pa.table({"ts": ts, "pos": np.arange(n)}))
    con.execute("CREATE TABLE f AS SELECT * FROM src")
    order = np.lexsort((np.arange(n), ts))
    indices = [0, 1, 57, 57, 150, 299, 300]
    assert split._rows_at(con, indices, n) == [(ts[order[k]].item(), int(order[k])) if k < n else None
                                               for k in indices]


def test_a_parquet_file_written_in_pieces_has_the_bytes_of_one_written_at_once(tmp_path, monkeypatch):
    """``write.RowGroups`` (the eval splits, users.parquet) against pq.write_table, with row groups of
    a few rows so that the file has several."""
    import dealrec.prepare.write as write

    monkeypatch.setattr(write, "ROW_GROUP_ROWS", 5)
    rng = np.random.default_rng(0)
    lists = [rng.integers(1, 9, rng.integers(0, 4)).astype(np.int32) for _ in range(23)]
    table = pa.table({"user": pa.array(np.arange(23)), "history": pa.array(lists, pa.list_(pa.int32())),
                      "targets": pa.array(lists[::-1], pa.list_(pa.int32()))})
    whole = io.BytesIO()
    pq.write_table(table, whole, row_group_size=5)
    with write.row_groups(tmp_path / "pieces.parquet", table.schema) as rows:
        for start, size in ((0, 3), (3, 0), (3, 9), (12, 11)):
            rows.add(table.slice(start, size))
    assert (tmp_path / "pieces.parquet").read_bytes() == whole.getvalue()
    empty = io.BytesIO()
    pq.write_table(table.schema.empty_table(), empty)
    with write.row_groups(tmp_path / "empty.parquet", table.schema):
        pass
    assert (tmp_path / "empty.parquet").read_bytes() == empty.getvalue()


def test_the_work_folder_is_removed_and_failed_parents_too(tmp_path):
    log = synth.generate(500, tmp_path / "log.parquet", seed=0, write_items=False)
    out = tmp_path / "a" / "it's" / "prepared"      # (a quote in a path DuckDB is given)
    result = run_cli("prepare", log["log"], "--out", out, "--min-rating", "9")
    assert "no interactions left after filtering" in error_line(result)
    assert not (tmp_path / "a").exists()
    assert run_cli("prepare", log["log"], "--out", out).exit_code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared"]


# ----------------------------------------------------------------------------- the benchmark

@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="bench_prepare measures with /usr/bin/time -v")
def test_bench_prepare_prints_its_table(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_prepare.py"), "--sizes", "1000,2000",
                          "--work", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| 1,000") or ln.startswith("| 2,000")]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[3]) > 0 and cells[4].endswith("x")
    assert not list(tmp_path.glob("**/*.parquet"))          # the logs and folders are removed afterwards
