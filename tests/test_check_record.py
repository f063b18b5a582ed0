"""benchmarks/check_record.py: the check's record, read and drawn."""
from __future__ import annotations

from benchmark_module import load_benchmark

record = load_benchmark("check_record")


def test_a_call_is_right_when_the_check_and_tiger_fall_on_the_same_side_of_random(tmp_path):
    csv = tmp_path / "record.csv"
    csv.write_text("log,seed,check_coreset,check_random_mean,tiger_valid_r10,tiger_random_valid_r10,called_before_tiger\n"
                   "A (x),0,0.02,0.01,0.03,0.02,no\n"     # above, above: right
                   "A (x),1,0.01,0.02,0.01,0.02,no\n"     # below, below: right
                   "B,0,0.01,0.02,0.03,0.02,yes\n")       # below, above: wrong
    rows = record.read_record(csv)
    assert [r["right"] for r in rows] == [True, True, False]
    assert rows[0]["check_ratio"] == 2.0 and rows[2]["tiger_ratio"] == 1.5
    record.plot(rows, tmp_path / "img" / "record.png")
    assert (tmp_path / "img" / "record.png").stat().st_size > 10_000
