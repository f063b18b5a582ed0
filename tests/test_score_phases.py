"""``run_score`` is its phases in a row: prepare the inputs, influence, effort, write the outputs."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from dealrec.engine import LocalExecutor
from dealrec_core.data import sha256_file
from dealrec_core.errors import DealrecError
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


def test_the_influence_is_the_mean_over_the_kept_checkpoints(tmp_path):
    """A surrogate with kept epochs (``checkpoints/``), ``checkpoint_mean`` "influence": with
    ``influence_checkpoints`` 1 the influence is the best epoch's alone; with N it is the mean of what the best and
    the N - 1 latest kept give alone, in epoch order; a rerun resumes every checkpoint's phases; the measured
    influence is the best epoch's whatever N is."""
    data = write_tiny_prepared(tmp_path / "data", tiny_samples(40, N_ITEMS, seed=5), N_ITEMS, shard_size=16)
    folders = {}
    for name, seed in (("epoch-003", 1), ("epoch-004", 2), ("best", 3)):
        folders[name] = tmp_path / "alone" / name
        folders[name].mkdir(parents=True)
        save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                                       max_len=10, dropout=0.0, init_std=0.3, seed=seed), folders[name])
    sur = tmp_path / "sur"
    shutil.copytree(folders["best"], sur)
    for name in ("epoch-003", "epoch-004"):
        shutil.copytree(folders[name], sur / "checkpoints" / name)
    config = ScoreConfig(hvp=HvpConfig(damping=0.1, scale=10.0, hessian_samples=32, hvp_batch=8),
                         target="none", batch_size=8, effort_batch_size=8, shard_size=16, workers=0,
                         influence_checkpoints=1, checkpoint_mean="influence")

    def influence(out):
        return pq.read_table(out / "scores.parquet").column("influence").to_numpy()

    alone = {name: influence_of(run_score, data, folder, tmp_path / "runs" / name, config)
             for name, folder in folders.items()}
    assert not np.allclose(alone["best"], alone["epoch-004"])   # the three really differ
    one = run_score(data, sur, tmp_path / "one", config, progress=False)   # the best epoch alone
    np.testing.assert_array_equal(influence(tmp_path / "one"), alone["best"])
    assert "checkpoints" not in one["phases"] and one["inputs"]["surrogate_checkpoints_sha256"] == {}
    config = replace(config, influence_checkpoints=3)
    manifest = run_score(data, sur, tmp_path / "avg", config, progress=False)
    np.testing.assert_array_equal(influence(tmp_path / "avg"),
                                  np.mean(np.stack([alone["epoch-003"], alone["epoch-004"], alone["best"]]), axis=0))
    assert manifest["phases"]["checkpoints"]["epochs"] == ["epoch-003", "epoch-004"]
    assert list(manifest["inputs"]["surrogate_checkpoints_sha256"]) == ["epoch-003", "epoch-004"]
    assert (tmp_path / "avg" / "work" / "checkpoints" / "epoch-003" / "capture").is_dir()

    again = run_score(data, sur, tmp_path / "avg", config, progress=False)   # resumed: nothing recomputed
    np.testing.assert_array_equal(influence(tmp_path / "avg"), np.mean(
        np.stack([alone["epoch-003"], alone["epoch-004"], alone["best"]]), axis=0))
    for name in ("epoch-003", "epoch-004"):
        assert again["phases"]["checkpoints"][name]["capture"]["ran"] == 0
        assert again["phases"]["checkpoints"][name]["influence"]["ran"] == 0

    two = run_score(data, sur, tmp_path / "two", replace(config, influence_checkpoints=2), progress=False)
    assert two["phases"]["checkpoints"]["epochs"] == ["epoch-004"]
    np.testing.assert_array_equal(influence(tmp_path / "two"),
                                  np.mean(np.stack([alone["epoch-004"], alone["best"]]), axis=0))
    four = run_score(data, sur, tmp_path / "four", replace(config, influence_checkpoints=4), progress=False)
    assert four["phases"]["checkpoints"]["used"] == 3   # it kept two: all three are used, and it says so
    np.testing.assert_array_equal(influence(tmp_path / "four"), influence(tmp_path / "avg"))
    # the measured influence is the best epoch's whatever the option says (its v is measured at those weights)
    measured = replace(config, influence_v="measured", influence_checkpoints=3)
    np.testing.assert_array_equal(
        influence_of(run_score, data, sur, tmp_path / "measured", measured),
        influence_of(run_score, data, folders["best"], tmp_path / "measured-best", measured))


def test_the_influence_at_the_kept_checkpoints_mean_weights(tmp_path):
    """The default (``checkpoint_mean`` "weights", three epochs): the influence is what a surrogate holding the
    uniform mean of the best's and the two latest kept epochs' weights gives alone, scored once (no checkpoint's own phases); a rerun resumes it; a
    kept epoch of another model is refused with its file named."""
    data = write_tiny_prepared(tmp_path / "data", tiny_samples(40, N_ITEMS, seed=5), N_ITEMS, shard_size=16)
    shape = dict(n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16, max_len=10, dropout=0.0,
                 init_std=0.3)
    models = {name: build_surrogate("sasrec", **shape, seed=seed)
              for name, seed in (("epoch-003", 1), ("epoch-004", 2), ("best", 3))}
    sur = tmp_path / "sur"
    sur.mkdir()
    save_surrogate(models["best"], sur)
    for name in ("epoch-003", "epoch-004"):
        (sur / "checkpoints" / name).mkdir(parents=True)
        save_surrogate(models[name], sur / "checkpoints" / name)
    by_hand = tmp_path / "by-hand"   # the mean of the three, written by the test, scored as a surrogate alone
    by_hand.mkdir()
    states = [models[name].state_dict() for name in ("epoch-003", "epoch-004", "best")]
    mean = {k: (states[0][k].double() + states[1][k].double() + states[2][k].double()) / 3 for k in states[0]}
    save_surrogate(models["best"], by_hand, state={k: v.float() for k, v in mean.items()})
    config = ScoreConfig(hvp=HvpConfig(damping=0.1, scale=10.0, hessian_samples=32, hvp_batch=8),
                         target="none", batch_size=8, effort_batch_size=8, shard_size=16, workers=0)
    alone = influence_of(run_score, data, by_hand, tmp_path / "alone", replace(config, influence_checkpoints=1))
    manifest = run_score(data, sur, tmp_path / "avg", config, progress=False)
    scores = pq.read_table(tmp_path / "avg" / "scores.parquet").column("influence").to_numpy()
    np.testing.assert_array_equal(scores, alone)
    best = influence_of(run_score, data, sur, tmp_path / "best", replace(config, influence_checkpoints=1))
    assert not np.allclose(scores, best)   # the mean weights really score otherwise than the best epoch
    record = manifest["phases"]["checkpoints"]
    assert record["epochs"] == ["epoch-003", "epoch-004"] and record["mean"] == "weights" and record["used"] == 3
    assert record["sha256"] == sha256_file(tmp_path / "avg" / "work" / "checkpoints" / "weights-mean" / "surrogate"
                                           / "model.safetensors")
    assert "epoch-003" not in record and not (tmp_path / "avg" / "work" / "capture").exists()   # scored once
    again = run_score(data, sur, tmp_path / "avg", config, progress=False)
    assert again["phases"]["capture"]["ran"] == 0 and again["phases"]["influence"]["ran"] == 0
    np.testing.assert_array_equal(pq.read_table(tmp_path / "avg" / "scores.parquet").column("influence").to_numpy(),
                                  alone)

    other = build_surrogate("sasrec", **{**shape, "hidden": 12, "ffn_hidden": 24}, seed=4)
    save_surrogate(other, sur / "checkpoints" / "epoch-004")
    with pytest.raises(DealrecError, match=r"epoch-004/model.safetensors: not the same model"):
        run_score(data, sur, tmp_path / "bad", config, progress=False)
    with pytest.raises(DealrecError, match="unknown --checkpoint-mean 'median'"):
        replace(config, checkpoint_mean="median").check()


def influence_of(run, data, surrogate, out, config):
    run(data, surrogate, out, config, progress=False)
    return pq.read_table(out / "scores.parquet").column("influence").to_numpy()


def test_a_surrogate_trained_with_the_sampled_loss_gets_a_note(tmp_path, capsys):
    """The bce surrogate's coresets lost far to random on Games (docs/selection.md): score says so, once, and
    says nothing for the default loss."""
    data = write_tiny_prepared(tmp_path / "data", tiny_samples(24, N_ITEMS, seed=2), N_ITEMS, shard_size=16)
    config = ScoreConfig(hvp=HvpConfig(solver="cg", damping=0.1, scale=10.0, hessian_samples=16, hvp_batch=8),
                         target="none", batch_size=8, shard_size=16, workers=0, influence_checkpoints=1)
    for loss in ("ce", "bce"):
        sur = tmp_path / f"sur-{loss}"
        sur.mkdir()
        save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                                       max_len=10, dropout=0.0, init_std=0.3, seed=1, loss=loss), sur)
        capsys.readouterr()
        run_score(data, sur, tmp_path / f"run-{loss}", config, progress=False)
        err = capsys.readouterr().err
        assert err.count("--loss bce") == (loss == "bce"), err
        if loss == "bce":
            assert f"note: {sur} was trained with --loss bce" in err and "Ablations on TIGER" in err
