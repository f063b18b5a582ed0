"""``run_score`` is its phases in a row: prepare the inputs, influence, effort, write the outputs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from dealrec.engine import LocalExecutor
from dealrec.hvp import HvpConfig
from dealrec.score import (ScoreConfig, effort_phase, influence_phase, prepare_score_inputs, run_score,
                           write_score_outputs)
from surrogates.base import save_surrogate
from surrogates.registry import build_surrogate
from tiny_surrogate import tiny_samples, write_tiny_prepared

N_ITEMS = 30


def test_the_phases_by_hand_give_what_run_score_gives(tmp_path):
    data = write_tiny_prepared(tmp_path / "data", tiny_samples(40, N_ITEMS, seed=5), N_ITEMS, shard_size=16)
    sur = tmp_path / "sur"
    sur.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                                   max_len=10, dropout=0.0, init_std=0.3, seed=1), sur)
    config = ScoreConfig(hvp=HvpConfig(solver="cg", damping=0.1, scale=10.0, hessian_samples=32, hvp_batch=8),
                         target="none", batch_size=8, effort_batch_size=8, shard_size=16, workers=0)
    whole = run_score(data, sur, tmp_path / "whole", config, progress=False)

    job = prepare_score_inputs(data, sur, tmp_path / "parts", config)
    assert job.work == tmp_path / "parts" / "work" and len(job.samples) == 40
    phases: dict = {}
    executor = LocalExecutor()
    result = influence_phase(job, config, executor, phases, progress=False)
    assert list(phases) == ["capture", "solve", "influence"] and result.n_rows == phases["influence"]["rows"]
    effort, target = effort_phase(job, config, executor, phases, result.sample_id, progress=False)
    assert effort is None and target == {"target": "none"}
    parts = write_score_outputs(job, config, result, effort, target, executor.describe(), phases, 0.0)

    assert list(parts) == list(whole) and parts["counts"] == whole["counts"] and parts["hvp"]["iterations"] == \
        whole["hvp"]["iterations"]
    assert json.loads((tmp_path / "parts" / "manifest.json").read_text()) == parts
    a, b = pq.read_table(tmp_path / "whole" / "scores.parquet"), pq.read_table(tmp_path / "parts" / "scores.parquet")
    assert a.column_names == b.column_names == ["sample_id", "influence"]
    np.testing.assert_array_equal(a.column("influence").to_numpy(), b.column("influence").to_numpy())
