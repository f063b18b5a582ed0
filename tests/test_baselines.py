"""Baseline scores (EL2N, GraNd) against direct computations on a tiny SASRec, and the commands."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from dealrec.baselines import baseline_scores, el2n_scores, grand_scores, grand_scores_loop, prediction_positions
from dealrec.cli import main
from dealrec_core.data import Samples, samples_table, write_samples
from dealrec_core.errors import DealrecError
from surrogates.base import save_surrogate
from surrogates.sasrec import SASRec, SASRecConfig

N_ITEMS = 30


def _model(loss="ce", max_len=6, seed=0, **fields):
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=max_len, hidden=8, n_heads=2, ffn_hidden=16,
                                loss=loss, seed=seed, **fields))
    # spread the weights so the probabilities are far from uniform and the check has teeth
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return model.eval()


def _samples(n=24, seed=0, max_hist=9):
    rng = np.random.default_rng(seed)
    hist = [rng.integers(1, N_ITEMS + 1, rng.integers(0, max_hist)).astype(np.int32) for _ in range(n)]
    sid = np.arange(n, dtype=np.int64) * 5 + 2
    return Samples(sid, sid, hist, rng.integers(1, N_ITEMS + 1, n).astype(np.int32))


def test_prediction_positions_are_the_trained_positions():
    # with every sequence within max_len and position ids counted from the start (so that a
    # prefix's forward equals the training forward), mean -log p(next item) over the positions
    # must equal the CE sample loss: the prefixes are exactly the positions trained on
    model, samples = _model(max_len=12, positions="from_start"), _samples(max_hist=10)
    rows, prefixes, labels = prediction_positions(samples, 12)
    assert len(rows) == sum(len(h) + 1 for h in samples.history)  # an empty history still counts once
    with torch.no_grad():
        logp = model.full_sort_scores(model.collate_histories(prefixes)).log_softmax(-1)
        nll = -logp[torch.arange(len(labels)), torch.from_numpy(labels)].double().numpy()
        losses = model.sample_losses(model.collate(samples)).double().numpy()
    np.testing.assert_allclose(np.bincount(rows, nll) / np.bincount(rows), losses, rtol=1e-5)
    # long sequences keep only their last max_len positions
    rows, _, labels = prediction_positions(samples, 3)
    assert np.bincount(rows).max() == 3


def test_el2n_equals_direct_norm_and_ignores_batching():
    model, samples = _model(), _samples()
    got = el2n_scores(model, samples, batch_size=7, progress=False)
    np.testing.assert_allclose(el2n_scores(model, samples, batch_size=1000, progress=False), got, rtol=1e-6)
    expected = []
    with torch.no_grad():
        for i in range(len(samples)):
            seq = samples.sequences()[i][-6:] if len(samples.sequences()[i]) > 6 else samples.sequences()[i]
            full = samples.sequences()[i]
            norms = []
            for t in range(len(full) - len(seq), len(full)):
                p = model.full_sort_scores(model.collate_histories([full[:t]]))[0].softmax(-1).double()
                onehot = torch.zeros_like(p)
                onehot[int(full[t])] = 1.0
                norms.append(float((p - onehot).norm()))
            expected.append(np.mean(norms))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert ((got > 0) & (got < np.sqrt(2))).all()
    assert got.std() > 1e-3  # the scores actually tell samples apart


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_grand_equals_per_sample_autograd_loop(loss):
    model, samples = _model(loss=loss), _samples(n=13)
    expected = grand_scores_loop(model, samples)   # one plain autograd backward per sample
    for batch_size in (1, 4, 13):
        got = grand_scores(model, samples, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # restricted to one block: smaller norms, same definition
    part = grand_scores(model, samples, batch_size=5, param_names=["blocks.1."], progress=False)
    assert (part < np.asarray(expected)).all() and (part > 0).all()
    with pytest.raises(DealrecError, match="no trainable parameter"):
        grand_scores(model, samples, param_names=["nope"], progress=False)


def test_baseline_scores_names_its_column():
    model, samples = _model(), _samples(n=6)
    assert set(baseline_scores("ccs", model, samples, progress=False)) == {"el2n"}
    assert set(baseline_scores("grand", model, samples, progress=False)) == {"grand"}
    with pytest.raises(DealrecError, match="not a surrogate-scored baseline"):
        baseline_scores("dealrec", model, samples)


def _run_with_surrogate(tmp_path):
    samples = _samples(n=60, seed=4)
    data = tmp_path / "data"
    write_samples(samples_table(samples.sample_id, samples.user, samples.history, samples.target),
                  data / "samples", shard_size=25)
    pq.write_table(pa.table({"item": np.arange(1, N_ITEMS + 1, dtype=np.int32),
                             "title": [f"item {i}" for i in range(1, N_ITEMS + 1)]}), data / "items.parquet")
    surrogate = tmp_path / "surrogate"
    surrogate.mkdir()
    save_surrogate(_model(), surrogate)
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"sample_id": samples.sample_id, "influence": rng.normal(size=60),
                             "effort": rng.random(60)}), run / "scores.parquet")
    (run / "manifest.json").write_text(json.dumps({"data": str(data), "surrogate": {"path": str(surrogate)}}))
    return run, samples


@pytest.mark.parametrize("method", ["el2n", "grand", "ccs"])
def test_each_baseline_method_runs_from_the_command(tmp_path, method):
    run, samples = _run_with_surrogate(tmp_path)
    res = CliRunner().invoke(main, ["select", str(run), "--method", method, "--n", "12", "--k", "5",
                                    "--no-plot"])
    assert res.exit_code == 0, res.output
    scores = pq.read_table(run / "scores.parquet")
    column = "grand" if method == "grand" else "el2n"
    assert {"influence", "effort", column, "score", "stratum"} <= set(scores.column_names)
    coreset = pq.read_table(run / "coreset.parquet")
    assert coreset.num_rows == 12
    values = scores.column(column).to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()
    if method != "ccs":  # top-n by the baseline score
        top = set(scores.column("sample_id").to_numpy()[np.argsort(-values)[:12]])
        assert set(coreset.column("sample_id").to_numpy()) == top
    else:
        assert (scores.column("stratum").to_numpy() == -1).sum() == 6
    section = json.loads((run / "manifest.json").read_text())["selection"]
    assert section["method"] == method and len(section["inputs"]["surrogate_sha256"]) == 64


def test_baseline_without_a_surrogate_is_a_clear_error(tmp_path):
    run, _ = _run_with_surrogate(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["surrogate"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(main, ["select", str(run), "--method", "el2n", "--no-plot"])
    assert res.exit_code == 2 and "--surrogate DIR" in res.output


def test_baseline_scores_are_reused_only_when_nothing_changed(tmp_path):
    run, _ = _run_with_surrogate(tmp_path)

    def select(method):
        res = CliRunner().invoke(main, ["select", str(run), "--method", method, "--n", "12", "--no-plot"])
        assert res.exit_code == 0, res.output
        return json.loads((run / "manifest.json").read_text())["selection"]["inputs"]

    first = select("el2n")
    assert "baseline_seconds" in first and "baseline_reused" not in first
    el2n = pq.read_table(run / "scores.parquet").column("el2n").to_numpy()
    again = select("ccs")  # same difficulty column, same surrogate and samples: reused
    assert again["baseline_reused"] == "el2n" and "baseline_seconds" not in again
    np.testing.assert_array_equal(pq.read_table(run / "scores.parquet").column("el2n").to_numpy(), el2n)
    # a hand-edited column is recomputed, and so is one from another surrogate
    table = pq.read_table(run / "scores.parquet")
    table = table.set_column(table.column_names.index("el2n"), "el2n", pa.array(np.zeros(table.num_rows)))
    pq.write_table(table, run / "scores.parquet")
    edited = select("el2n")
    assert "baseline_seconds" in edited
    np.testing.assert_allclose(pq.read_table(run / "scores.parquet").column("el2n").to_numpy(), el2n)
    save_surrogate(_model(seed=1), tmp_path / "surrogate")
    other = select("el2n")
    assert "baseline_seconds" in other and other["surrogate_sha256"] != first["surrogate_sha256"]
