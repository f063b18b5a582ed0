"""benchmarks/prune_phases.py: the phases of prune runs side by side, read from their manifests."""
from __future__ import annotations

import hashlib
import json

import pytest

from benchmark_module import load_benchmark

phases = load_benchmark("prune_phases")


def _run(folder, train_seconds, coreset: bytes):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"prune": {"seconds": 100.25, "phases": {
        "prepare": {"seconds": 0.01},
        "train_surrogate": {"seconds": train_seconds, "trained": True},
        "score": {"seconds": 30.0, "capture": {"seconds": 6.61}, "solve": {"seconds": 11.4},
                  "influence": {"seconds": 12.0, "rows": 7}},
        "select": {"seconds": 1.9}}}}))
    (folder / "coreset.parquet").write_bytes(coreset)
    (folder / "surrogate").mkdir()
    (folder / "surrogate" / "metrics.json").write_text(json.dumps({"epochs": 9, "best_epoch": 6,
                                                                  "valid": {"ndcg@10": 0.02721}}))
    return folder


def test_the_table_has_a_row_a_phase_and_a_column_a_run(tmp_path, capsys):
    a = _run(tmp_path / "a", 77.23, b"same")
    b = _run(tmp_path / "b", 77.71, b"same")
    assert phases.main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| phase (seconds) | a | b |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert rows["train_surrogate"] == ["77.2", "77.7 |"]
    assert rows["score: capture"] == ["6.6", "6.6 |"] and rows["score: influence"] == ["12.0", "12.0 |"]
    assert "score: effort" not in rows   # a phase the run did not have gets no row
    assert rows["total"] == ["100.2", "100.2 |"]
    assert rows["surrogate epochs (best)"] == ["9 (6)", "9 (6) |"]
    digest = hashlib.sha256(b"same").hexdigest()[:12]
    assert rows["sha256 coreset.parquet"] == [digest, f"{digest} |"]
    assert rows["sha256 scores.parquet"] == ["missing", "missing |"]


def test_a_folder_without_a_finished_prune_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"score": {}}))
    with pytest.raises(SystemExit, match=r"run/manifest.json: no 'prune' entry"):
        phases.main([str(tmp_path / "run")])
