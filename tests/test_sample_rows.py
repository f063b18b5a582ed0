"""``SampleRows``: the samples table read by rows (issue 11: neither a scoring worker nor the driver holds
the whole table). Every read must equal the same rows of the whole-table read, bit for bit."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dealrec_core.data import SampleRows, Samples, load_samples, samples_table, write_samples
from dealrec_core.errors import InputError


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    hist = [rng.integers(1, 50, size=int(k)).astype(np.int32) for k in rng.integers(0, 7, size=n)]
    return samples_table(np.arange(n) * 3 + 1, rng.integers(0, 20, size=n), hist, rng.integers(1, 50, size=n))


def _same(a: Samples, b: Samples):
    assert a.sample_id.tobytes() == b.sample_id.tobytes() and a.user.tobytes() == b.user.tobytes()
    assert a.target.tobytes() == b.target.tobytes()
    assert len(a.history) == len(b.history) and all(x.tobytes() == y.tobytes() for x, y in zip(a.history, b.history))


@pytest.fixture()
def folder(tmp_path):
    write_samples(_table(103), tmp_path / "samples", shard_size=16)   # 7 files, the last of 7 rows
    return tmp_path / "samples"


def test_rows_and_subsets_equal_the_whole_table_read(folder):
    whole = load_samples(folder)
    rows = SampleRows(folder)
    assert len(rows) == 103
    for start, stop in [(0, 16), (10, 40), (96, 103), (0, 103), (50, 50)]:
        _same(rows.rows(start, stop), whole.subset(np.arange(start, stop)))
    idx = np.array([102, 0, 17, 16, 55, 3])   # out of order, across files
    _same(rows.subset(idx), whole.subset(idx))
    np.testing.assert_array_equal(rows.history_lengths(), [len(h) for h in whole.history])
    np.testing.assert_array_equal(rows.check_unique_ids(), whole.sample_id)
    with pytest.raises(IndexError):
        rows.subset([103])


def test_a_shard_reads_only_the_files_that_hold_its_rows(folder, monkeypatch):
    rows = SampleRows(folder)
    read = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda p, *a, **k: (read.append(p.name), real(p, *a, **k))[1])
    rows.rows(20, 30)            # inside part-00001
    rows.rows(28, 40)            # part-00001 again (kept) and part-00002
    assert read == ["part-00001.parquet", "part-00002.parquet"]


def test_bad_tables_are_refused_naming_the_file_before_any_row_is_read(tmp_path):
    good = _table(10)
    write_samples(good, tmp_path / "a", shard_size=4)
    pq.write_table(good.drop(["target"]), tmp_path / "a" / "part-00001.parquet")
    with pytest.raises(InputError, match=r"part-00001\.parquet.*missing column target"):
        SampleRows(tmp_path / "a")
    bad_type = good.set_column(good.schema.get_field_index("target"), "target",
                               pa.array([f"x{i}" for i in range(10)]))
    (tmp_path / "b").mkdir()
    pq.write_table(bad_type, tmp_path / "b" / "part-00000.parquet")
    with pytest.raises(InputError, match=r"part-00000\.parquet.*target must be integer"):
        SampleRows(tmp_path / "b")
    dup = samples_table([1, 2, 2], [0, 0, 0], [[], [1], [2]], [1, 2, 3])
    write_samples(dup, tmp_path / "c", shard_size=2)   # the repeated id spans two files
    with pytest.raises(InputError, match="sample_id values are not unique"):
        SampleRows(tmp_path / "c").check_unique_ids()


@pytest.mark.parametrize("method", ["dealrec", "random", "influence"])
def test_selection_from_rows_on_disk_equals_selection_from_the_whole_table(folder, method):
    from dealrec.coreset import select_coreset
    whole = load_samples(folder).to_table()
    rng = np.random.default_rng(3)
    scores = pa.table({"sample_id": whole.column("sample_id"),
                       "influence": rng.normal(size=whole.num_rows), "effort": rng.random(whole.num_rows)})
    a = select_coreset(scores, whole, method, n=20, k=4, seed=1)
    b = select_coreset(scores, SampleRows(folder), method, n=20, k=4, seed=1)
    assert a.coreset.equals(b.coreset) and a.scores.equals(b.scores) and a.summary == b.summary
    assert b.coreset.num_rows == 20
