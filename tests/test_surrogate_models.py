"""BERT4Rec's cloze batches and DCRec's graphs, each model learning a rule through ``dealrec train-surrogate``,
and ``--surrogate-model`` in ``prune`` and ``compare`` (the contract itself: test_surrogate_contract.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import PreparedData, Samples
from dealrec_core.evaluate import evaluate_scorer, popularity_scorer
from surrogates.base import save_surrogate
from surrogates.dcrec import interaction_pairs, transition_edges
from surrogates.registry import build_surrogate, load_surrogate
from test_surrogate_train import N_ITEMS, make_prepared
from tiny_surrogate import tiny_samples

SHAPE = dict(hidden=16, n_blocks=1, n_heads=2, ffn_hidden=32, max_len=10)


# ----------------------------------------------------------------------------- BERT4Rec's cloze task

def test_bert4rec_masks_are_keyed_by_sample_round_and_position():
    samples = tiny_samples(40, 30, seed=2, max_hist=9)
    model = build_surrogate("bert4rec", n_items=30, mask_prob=0.4, seed=3, **SHAPE)
    batch = model.training_batch(samples, 0)
    masked = batch["input_ids"] == model.mask
    real = (batch["input_ids"] > 0)
    lengths = real.sum(1)
    assert torch.equal(batch["labels"] > 0, masked)
    # the masked items are the sequence's own items; the last item (the target) is always masked
    seq = [np.append(h, t)[-SHAPE["max_len"]:] for h, t in zip(samples.history, samples.target)]
    for i, s in enumerate(seq):
        assert batch["labels"][i, :len(s)][masked[i, :len(s)]].tolist() == s[masked[i, :len(s)].numpy()].tolist()
        assert masked[i, lengths[i] - 1] and batch["labels"][i, lengths[i] - 1] == samples.target[i]
    # the same sample masks the same positions in another batch; another round or seed draws others
    alone = model.training_batch(samples.subset([7]), 0)
    assert torch.equal(alone["input_ids"][0, :lengths[7]], batch["input_ids"][7, :lengths[7]])
    assert not torch.equal(model.training_batch(samples, 1)["input_ids"], batch["input_ids"])
    other = build_surrogate("bert4rec", n_items=30, mask_prob=0.4, seed=4, **SHAPE)
    assert not torch.equal(other.training_batch(samples, 0)["input_ids"], batch["input_ids"])


@pytest.mark.parametrize("mask_last", [True, False])
def test_bert4rec_sample_weights_are_the_expected_masked_positions(mask_last):
    """Influence's v weighs each sample by its share of the cloze objective: its expected masked count."""
    samples = tiny_samples(30, 30, seed=5, max_hist=12)
    model = build_surrogate("bert4rec", n_items=30, mask_prob=0.3, mask_last=mask_last, **SHAPE)
    counts = np.mean([(model.training_batch(samples, r)["labels"] > 0).sum(1).numpy() for r in range(1000)], axis=0)
    weights = model.sample_weights(model.collate(samples)).numpy()
    np.testing.assert_allclose(counts, weights, rtol=0.06)
    assert np.all((model.training_batch(samples, 0)["labels"] > 0).sum(1).numpy() >= 1)


def test_bert4rec_scores_by_the_appended_mask():
    samples = tiny_samples(6, 30, seed=1, max_hist=5)
    model = build_surrogate("bert4rec", n_items=30, **SHAPE).eval()
    batch = model.collate(samples)
    rows = torch.arange(len(samples))
    assert torch.all(batch["input_ids"][rows, batch["lengths"] - 1] == model.mask)
    with torch.no_grad():
        scores = model.full_sort_scores(model.collate_histories(samples.history))
        expected = -scores.log_softmax(-1)[rows, torch.as_tensor(samples.target, dtype=torch.long)]
        torch.testing.assert_close(model.sample_losses(batch), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- DCRec's graphs

def test_dcrec_graphs_come_from_the_training_sequences():
    samples = Samples(np.arange(3), np.arange(3), [np.array([1, 2], np.int32), np.array([2], np.int32),
                                                   np.zeros(0, np.int32)], np.array([3, 3, 4], np.int32))
    edges = {tuple(e) for e in transition_edges(samples, 7).T.tolist()}
    moves = {(1, 2), (2, 3)}
    assert edges == moves | {(b, a) for a, b in moves} | {(i, i) for i in range(7)}
    pairs = {tuple(e) for e in interaction_pairs(samples, 7).T.tolist()}
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 4)}


def test_dcrec_graph_views_equal_the_dense_propagation():
    samples = tiny_samples(25, 12, seed=4, max_hist=6)
    model = build_surrogate("dcrec", n_items=12, graph_layers=2, **SHAPE).double()
    model.prepare_training(samples)
    model.eval()
    n = 14
    a = np.zeros((n, n))
    for r, c in transition_edges(samples, n).T:
        a[r, c] = 1
    deg = a.sum(1)
    a_hat = a / np.sqrt(np.outer(deg, deg))
    b = np.zeros((len(samples), n))
    for u, i in interaction_pairs(samples, n).T:
        b[u, i] = 1
    du, di = b.sum(1), b.sum(0)
    b_hat = b / np.sqrt(np.outer(du, np.where(di > 0, di, 1)))
    x = model.item_emb.weight.detach().numpy()
    with torch.no_grad():
        transition, interaction = model.graph_views()
        for view, step in ((transition, a_hat), (interaction, b_hat.T @ b_hat)):
            layers = [x, step @ x, step @ step @ x]
            want = model.graph_norm(torch.from_numpy(np.mean(layers, axis=0) + x)).numpy()
            np.testing.assert_allclose(view.numpy(), want, rtol=1e-9, atol=1e-12)


def test_dcrec_csr_products_match_torch_coo_products_with_first_and_second_derivatives():
    """The CPU's CSR propagation (a custom backward) against autograd through torch's COO product: the views,
    their gradient with respect to the item table, and a Hessian-vector product through them."""
    from surrogates.dcrec import _CsrProduct
    samples = tiny_samples(25, 12, seed=5, max_hist=6)
    model = build_surrogate("dcrec", n_items=12, graph_layers=2, dropout=0.0, **SHAPE).double()
    model.prepare_training(samples)
    model.train()
    ops = model._propagators()
    assert all(op.csr is not None for op in ops)

    def views(x, csr):
        step = (lambda op: (lambda y: _CsrProduct.apply(y, *op.csr))) if csr else \
            (lambda op: (lambda y: torch.sparse.mm(op.coo, y)))
        a, inc, inc_t = (step(op) for op in ops)
        return model._encode_graph(x, a), model._encode_graph(x, lambda y: inc_t(inc(y)))

    x0 = model.item_emb.weight.detach().clone()
    probe = [torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in (1, 2)]
    direction = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = {}
    for csr in (False, True):
        x = x0.clone().requires_grad_(True)
        t, i = views(x, csr)
        loss = (t * probe[0]).sum() + ((i * probe[1]).sum()) ** 2   # not linear: a real second derivative
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * direction).sum(), x)
        results[csr] = (t.detach(), i.detach(), grad.detach(), hvp)
    for got, want in zip(results[True], results[False]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # what the model computes on the CPU is the CSR path, bit for bit the same from call to call
    model.item_emb.weight.data.copy_(x0)
    first = model.graph_views()
    assert all(torch.equal(a, b) for a, b in zip(first, model.graph_views()))
    assert all(torch.equal(a, b) for a, b in zip(first, views(x0, True)))


def test_dcrec_rec_loss_is_the_sample_losses_and_the_contrast_is_training_only():
    samples = tiny_samples(30, 30, seed=6, max_hist=8)
    model = build_surrogate("dcrec", n_items=30, dropout=0.0, cl_weight=0.0, **SHAPE)
    model.prepare_training(samples)
    batch = model.collate(samples)
    losses, weights = model.sample_losses(batch), model.sample_weights(batch).float()
    # the position-weighted risk is sum_s w_s L_s / sum_s w_s: what influence's v is the gradient of
    torch.testing.assert_close(model.training_loss(batch, "position"), (losses * weights).sum() / weights.sum())
    torch.testing.assert_close(model.training_loss(batch, "sample"), losses.mean())
    model.config.cl_weight = 0.5
    assert model.training_loss(batch, "position") > (losses * weights).sum() / weights.sum()
    # conformity weights: in [0, max], mean conformity_mean
    h = torch.randn(20, 16)
    w = model.conformity(h, h + 0.1 * torch.randn(20, 16), torch.randn(20, 16))
    assert w.min() == 0 and abs(float(w.mean()) - model.config.conformity_mean) < 1e-6


def test_dcrec_refuses_a_loss_other_than_ce_and_a_weights_file_of_other_graphs(tmp_path):
    from dealrec_core.errors import DealrecError

    with pytest.raises(DealrecError, match="ce"):
        build_surrogate("dcrec", n_items=5, loss="bce")
    model = build_surrogate("dcrec", n_items=30, **SHAPE)
    model.prepare_training(tiny_samples(10, 30, seed=1))
    save_surrogate(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["n_transition_edges"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DealrecError, match="weights do not match"):
        load_surrogate(tmp_path)


# ----------------------------------------------------------------------------- the commands

@pytest.mark.parametrize("model,epochs,options", [("bert4rec", 60, ["--mask-prob", "0.3"]),
                                                  ("dcrec", 25, ["--cl-weight", "0.1", "--graph-layers", "1"])])
def test_train_surrogate_learns_the_ring_rule(model, epochs, options, tmp_path):
    """Users walk an item ring (next = previous + 1): both models learn it far beyond flat popularity (the
    cloze task sees fewer predictions an epoch: BERT4Rec needs more epochs than SASRec's 25)."""
    prepared = make_prepared(tmp_path / "prepared")
    out = tmp_path / model
    args = ["train-surrogate", str(prepared), "--model", model, "--out", str(out), "--hidden", "16", "--n-blocks",
            "1", "--max-len", "10", "--dropout", "0", "--max-epochs", str(epochs), "--patience", str(epochs),
            "--batch-size", "16", "--lr", "1e-2", "--seed", "1", "--threads", "1", "--quiet", *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert metrics["model"] == config["model"] == model
    assert config["config"][options[0][2:].replace("-", "_")] == float(options[1])
    data = PreparedData(prepared)
    popularity = evaluate_scorer(popularity_scorer(data.samples().sequences(), N_ITEMS), data.eval_split("test"),
                                 N_ITEMS)
    assert metrics["test"]["ndcg@10"] > popularity["ndcg@10"] + 0.3
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    again = evaluate_scorer(load_surrogate(out).score_histories, data.eval_split("valid"), N_ITEMS)
    assert again == pytest.approx(metrics["valid"], abs=1e-9)


def test_train_surrogate_refuses_another_models_option(tmp_path):
    prepared = make_prepared(tmp_path / "prepared")
    result = CliRunner().invoke(main, ["train-surrogate", str(prepared), "--out", str(tmp_path / "o"),
                                       "--mask-prob", "0.5"])
    assert result.exit_code == 2 and "--mask-prob does not apply to model sasrec" in result.output
    assert not (tmp_path / "o").exists()


def test_prune_trains_and_records_the_surrogate_model(tmp_path):
    from test_prune import write_release

    raw = write_release(tmp_path / "raw")
    out = tmp_path / "run"
    def args(model):
        return ["prune", str(raw), "--n", "12", "--out", str(out), "--target", "none", "--workers", "0",
                "--surrogate-model", model, "--surrogate-epochs", "1", "--hvp", "cg", "--damping", "0.05",
                "--lissa-scale", "10", "--hessian-samples", "32",
                "--hvp-batch", "16", "--batch-size", "16", "--effort-batch-size", "16", "--shard-size", "32", "--k", "4",
                "--quiet"]
    result = CliRunner().invoke(main, args("bert4rec"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prune"]["surrogate_model"] == "bert4rec"
    assert manifest["prune"]["phases"]["train_surrogate"]["model"] == "bert4rec"
    assert json.loads((out / "surrogate" / "config.json").read_text())["model"] == "bert4rec"
    # a rerun asking for another model does not reuse it, and says why
    again = CliRunner().invoke(main, args("dcrec"))
    assert again.exit_code == 0, again.output + repr(again.exception)
    phase = json.loads((out / "manifest.json").read_text())["prune"]["phases"]["train_surrogate"]
    assert phase["model"] == "dcrec" and "is a bert4rec, not a dcrec" in phase["redone"]
    # a given surrogate's model is recorded; asking for another one is refused before any work
    given = CliRunner().invoke(main, ["prune", str(out / "data"), "--n", "12", "--out", str(tmp_path / "r2"),
                                      "--surrogate", str(out / "surrogate"), "--surrogate-model", "sasrec"])
    assert given.exit_code == 2 and "holds a dcrec surrogate, not the --surrogate-model sasrec" in given.output
    assert not (tmp_path / "r2").exists()


def test_compare_refuses_an_unknown_or_contradicting_surrogate_model(tmp_path):
    from test_prune import write_release

    raw = write_release(tmp_path / "raw")
    result = CliRunner().invoke(main, ["compare", str(raw), "--out", str(tmp_path / "rep"), "--methods",
                                       "influence", "--surrogate-model", "gru4rec"])
    assert result.exit_code == 2 and "unknown surrogate model 'gru4rec' (choose from" in result.output
    assert not (tmp_path / "rep").exists()
    surrogate = tmp_path / "sur"
    surrogate.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=60, **SHAPE), surrogate)
    result = CliRunner().invoke(main, ["compare", str(raw), "--out", str(tmp_path / "rep"), "--methods",
                                       "influence", "--surrogate", str(surrogate), "--surrogate-model", "dcrec"])
    assert result.exit_code == 2 and "holds a sasrec surrogate" in result.output
    assert not (tmp_path / "rep").exists()
