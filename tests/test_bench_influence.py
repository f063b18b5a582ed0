"""benchmarks/bench_influence.py: every loop computes what the engine computes, the repeats give one row each
with a speed-up per run, and a device that is not there is refused in one line."""
from __future__ import annotations

import re
import sys

import pytest

from benchmark_module import load_benchmark
from tiny_surrogate import save_tiny_sasrec, tiny_samples, write_tiny_prepared

N_ITEMS, MAX_LEN = 30, 6

bench = load_benchmark("bench_influence")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_influence")
    data = write_tiny_prepared(root / "data", tiny_samples(40, N_ITEMS, seed=5), N_ITEMS, shard_size=16)
    return data, {loss: save_tiny_sasrec(root / f"sur-{loss}", N_ITEMS, MAX_LEN, seed=2, loss=loss)
                  for loss in ("ce", "bce")}


def run(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["bench_influence.py", *map(str, argv)])
    bench.main()
    return capsys.readouterr().out


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_the_loops_agree_with_the_engine_and_each_repeat_is_reported(inputs, monkeypatch, capsys, loss):
    data, surrogates = inputs
    out = run(monkeypatch, capsys, "--data", data, "--surrogate", surrogates[loss], "--loop-samples", 12,
              "--batch-size", 8, "--repeats", 3, "--warmup", 2)
    assert "3 run(s), medians" in out
    rows = {name: line for line in out.splitlines() for name in ("reference loop", "block loop", "all-parameter loop")
            if line.startswith(f"| {name}") or line.startswith(f"| extra: {name}")}
    assert set(rows) == {"reference loop", "block loop", "all-parameter loop"}
    for line in rows.values():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-1] == "1.000000"                                   # Spearman against the engine
        runs = re.search(r"\(([^)]*)\)\s*$", cells[3]).group(1).split(", ")
        assert len(runs) == 3 and all(float(r) > 0 for r in runs)
    rel = float(re.search(r"max relative difference engine vs reference loop on the subset: (\S+);", out).group(1))
    assert rel < 1e-4
    assert "exactly-zero engine scores: 0 of 40" in out


def test_refusals(inputs, monkeypatch, capsys):
    data, surrogates = inputs
    with pytest.raises(SystemExit, match="--repeats must be 1 or more, got 0"):
        run(monkeypatch, capsys, "--data", data, "--surrogate", surrogates["ce"], "--repeats", 0)
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA device"):
            run(monkeypatch, capsys, "--data", data, "--surrogate", surrogates["ce"], "--device", "cuda")
