"""benchmarks/dense_subset.py: the cut keeps the right items, renumbers them by popularity, filters every sequence
and evaluation row to them, and refuses what it cannot cut without leaving a folder behind."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dealrec_core.data import EvalSplit, PreparedData, samples_table, write_samples
from dealrec_core.errors import DealrecError
from benchmark_module import load_benchmark

ds = load_benchmark("dense_subset")

# items 1..6; odd ones are "pads" (category P), even ones "games" (G); item 6 has no categories at all
CATEGORIES = {1: ["V", "P"], 2: ["V", "G"], 3: ["V", "P"], 4: ["V", "G"], 5: ["V", "P"], 6: None}
SEQUENCES = {   # user -> training sequence (history + target)
    10: [1, 2, 3],
    11: [3, 3, 5, 2],
    12: [2, 4],          # no P item: dropped by the P cut
    13: [5],
    14: [6, 3, 1],
}
VALID = {10: ([1, 2, 3], [5, 2]), 12: ([2, 4], [1]), 13: ([5], [4]), 14: ([6, 3, 1], [3, 6])}


@pytest.fixture()
def prepared(tmp_path):
    root = tmp_path / "data"
    users = sorted(SEQUENCES)
    write_samples(samples_table(np.arange(len(users)) + 100, np.array(users),
                                [np.array(SEQUENCES[u][:-1], dtype=np.int32) for u in users],
                                np.array([SEQUENCES[u][-1] for u in users], dtype=np.int32)),
                  root / "samples", shard_size=2)
    pq.write_table(pa.table({"item": pa.array(np.arange(1, 7, dtype=np.int32)),
                             "title": [f"title {i}" for i in range(1, 7)],
                             "categories": pa.array([CATEGORIES[i] for i in range(1, 7)], type=pa.list_(pa.string()))}),
                   root / "items.parquet")
    (root / "eval").mkdir()
    for split in ("valid", "test"):
        rows = sorted(VALID.items())
        pq.write_table(EvalSplit(np.array([u for u, _ in rows], dtype=np.int64),
                                 [np.array(h, dtype=np.int32) for _, (h, _) in rows],
                                 [np.array(t, dtype=np.int32) for _, (_, t) in rows]).to_table(),
                       root / "eval" / f"{split}.parquet")
    return root


def _sequences(data: PreparedData) -> dict:
    s = data.samples()
    return {int(u): [int(i) for i in seq] for u, seq in zip(s.user, s.sequences())}


def test_category_cut_keeps_its_items_by_popularity_and_filters_every_row(prepared, tmp_path):
    counts = ds.cut(prepared, tmp_path / "cut", items=100, samples=100, category="P")
    out = PreparedData(tmp_path / "cut")
    # P items by training popularity: 3 (4 times), 1 (2), 5 (2; ties keep id order): new ids 1, 2, 3
    assert out.items.column("title").to_pylist() == ["title 3", "title 1", "title 5"]
    assert out.items.column("item").to_pylist() == [1, 2, 3]
    assert out.items.column("categories").to_pylist() == [["V", "P"]] * 3
    assert _sequences(out) == {10: [2, 1], 11: [1, 1, 3], 13: [3], 14: [1, 2]}
    valid = out.eval_split("valid")
    # user 12 has no sample left; 13's only target (4) is outside the cut; 14 keeps the target 3
    assert valid.user.tolist() == [10, 14]
    assert [t.tolist() for t in valid.targets] == [[3], [1]]
    assert [h.tolist() for h in valid.history] == [[2, 1], [1, 2]]
    assert counts == {"samples": 4, "items": 3, "valid_users": 2, "test_users": 2}


def test_top_items_and_sample_cap(prepared, tmp_path):
    ds.cut(prepared, tmp_path / "cut", items=2, samples=2)
    out = PreparedData(tmp_path / "cut")
    # all items by popularity: 3 (4), 2 (3) ...: the two kept
    assert out.items.column("title").to_pylist() == ["title 3", "title 2"]
    assert _sequences(out) == {10: [2, 1], 11: [1, 1, 2]}   # the first two samples that keep an item


def test_refusals_name_the_cause_and_write_nothing(prepared, tmp_path):
    with pytest.raises(DealrecError, match="no item has the category 'Q'"):
        ds.cut(prepared, tmp_path / "cut", items=10, samples=10, category="Q")
    assert not (tmp_path / "cut").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(DealrecError, match="already exists"):
        ds.cut(prepared, tmp_path / "taken", items=10, samples=10)
    table = pq.read_table(prepared / "items.parquet").drop(["categories"])
    pq.write_table(table, prepared / "items.parquet")
    with pytest.raises(DealrecError, match="items.parquet: no 'categories' column"):
        ds.cut(prepared, tmp_path / "cut", items=10, samples=10, category="P")
    (prepared / "eval" / "test.parquet").unlink()   # fails while the cut is being written, after its samples
    with pytest.raises(DealrecError, match=r"eval/test.parquet: no such file"):
        ds.cut(prepared, tmp_path / "cut", items=10, samples=10)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cut") or ".cut" in p.name] == []


def test_command_line_refusal_is_one_line(prepared, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ds.main(["--data", str(prepared), "--out", str(tmp_path / "cut"), "--category", "Q"])
    assert str(exc.value).startswith("dense_subset: ") and "\n" not in str(exc.value)


pool = load_benchmark("pool_cuts")


def test_a_pool_keeps_each_folder_apart_with_its_own_item_and_user_ids(prepared, tmp_path):
    """Two cuts of the same log pooled: every sequence and evaluation row is its folder's, shifted past the folders
    before it; the same user in both is two users; items are listed once per folder, in order."""
    ds.cut(prepared, tmp_path / "p", items=100, samples=100, category="P")
    ds.cut(prepared, tmp_path / "g", items=100, samples=100, category="G")
    counts = pool.pool([tmp_path / "p", tmp_path / "g"], tmp_path / "pool")
    a, b, out = PreparedData(tmp_path / "p"), PreparedData(tmp_path / "g"), PreparedData(tmp_path / "pool")
    assert out.n_items == a.n_items + b.n_items == counts["items"]
    assert out.items.column("item").to_pylist() == list(range(1, out.n_items + 1))
    assert out.items.column("title").to_pylist() == a.items.column("title").to_pylist() + \
        b.items.column("title").to_pylist()
    pooled = out.samples()
    expected = [list(s) for s in a.samples().sequences()] + \
        [[int(i) + a.n_items for i in s] for s in b.samples().sequences()]
    assert [[int(i) for i in s] for s in pooled.sequences()] == expected
    assert len(set(pooled.sample_id.tolist())) == len(pooled) == counts["samples"]
    n_a = len(a.samples())
    assert not set(pooled.user[:n_a].tolist()) & set(pooled.user[n_a:].tolist())   # user 10 is in both cuts
    for split in ("valid", "test"):
        e, ea, eb = out.eval_split(split), a.eval_split(split), b.eval_split(split)
        assert [list(t) for t in e.targets] == [list(t) for t in ea.targets] + \
            [[int(i) + a.n_items for i in t] for t in eb.targets]
        # each evaluation user is the pooled user of the same folder's samples
        users_a = dict(zip(a.samples().user.tolist(), pooled.user[:n_a].tolist()))
        assert e.user[:len(ea)].tolist() == [users_a[u] for u in ea.user.tolist()]
    with pytest.raises(DealrecError, match="already exists"):
        pool.pool([tmp_path / "p", tmp_path / "g"], tmp_path / "pool")
    with pytest.raises(DealrecError, match="at least two"):
        pool.pool([tmp_path / "p"], tmp_path / "pool2")
