"""The surrogate training loop and ``dealrec train-surrogate`` on tiny prepared folders."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import EvalSplit, PreparedData, SampleRows, samples_table, write_parquet_atomic, write_samples
from dealrec_core.errors import DealrecError
from dealrec_core.evaluate import evaluate_scorer, popularity_scorer
from surrogates.registry import load_surrogate
from surrogates.train import TrainConfig, train_surrogate

N_ITEMS = 60  # the evaluator ranks the top 50, so the catalogue must be larger
METRIC_KEYS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}
TINY_MODEL = {"hidden": 16, "n_heads": 2, "n_blocks": 1, "ffn_hidden": 32, "max_len": 10, "dropout": 0.0}


def make_prepared(root, n_users=80, seed=0):
    """Users walk the item ring: each next item is the previous one + 1 (mod N_ITEMS), so a
    sequence model can learn the rule while item popularity is flat and useless."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for _ in range(n_users):
        start = int(rng.integers(0, N_ITEMS))
        length = int(rng.integers(1, 9))  # length 1: an empty history
        walk = (start + np.arange(length + 2)) % N_ITEMS + 1
        train.append(walk[:length].astype(np.int32))
        valid.append(walk[length:length + 1].astype(np.int32))
        test.append(walk[length + 1:length + 2].astype(np.int32))
    users = np.arange(n_users) + 1000
    write_samples(samples_table(np.arange(n_users), users, [t[:-1] for t in train], [t[-1] for t in train]),
                  root / "samples", shard_size=32)
    (root / "eval").mkdir(parents=True)
    write_parquet_atomic(EvalSplit(users, train, valid).to_table(), root / "eval" / "valid.parquet")
    write_parquet_atomic(EvalSplit(users, [np.concatenate([a, b]) for a, b in zip(train, valid)], test).to_table(),
                         root / "eval" / "test.parquet")
    write_parquet_atomic(pa.table({"item": pa.array(np.arange(1, N_ITEMS + 1), pa.int32()),
                                   "title": [f"item {i}" for i in range(1, N_ITEMS + 1)]}), root / "items.parquet")
    return root


@pytest.fixture()
def prepared(tmp_path):
    return make_prepared(tmp_path / "prepared")


def test_training_learns_the_sequence_rule_and_writes_the_folder(prepared, tmp_path):
    out = tmp_path / "model"
    cfg = TrainConfig(lr=1e-2, batch_size=16, max_epochs=25, patience=25, seed=1, threads=1, progress=False)
    metrics = train_surrogate(prepared, "sasrec", out, TINY_MODEL, cfg)
    on_disk = json.loads((out / "metrics.json").read_text())
    kept = ["checkpoints"] if on_disk["checkpoints"] else []
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "metrics.json", "model.safetensors", *kept])
    for split in ("valid", "test"):
        assert set(on_disk[split]) == METRIC_KEYS
    assert on_disk["epochs"] == 25 and 1 <= on_disk["best_epoch"] <= 25
    assert on_disk["seconds"] > 0 and on_disk["seconds_per_epoch"] > 0 and on_disk["cpu_seconds_per_epoch"] > 0
    data = PreparedData(prepared)
    popularity = evaluate_scorer(popularity_scorer(data.samples().sequences(), N_ITEMS),
                                 data.eval_split("test"), N_ITEMS)
    # the rule "next = previous + 1" is learnt: far above flat popularity (about 10/60 at recall@10)
    assert metrics["test"]["ndcg@10"] > 0.8 > popularity["ndcg@10"] + 0.3
    # the saved weights are the best epoch's: reloading reproduces the reported valid metrics
    model = load_surrogate(out)
    again = evaluate_scorer(model.score_histories, data.eval_split("valid"), N_ITEMS)
    assert again == pytest.approx(on_disk["valid"], abs=1e-9)


def test_kept_checkpoints_are_the_epochs_before_the_best(prepared, tmp_path):
    """--checkpoints 3: the two validated epochs just before the best are saved as surrogate folders, and
    each reloads to the validation metrics its epoch recorded; the model itself is the best epoch's, the same
    bits as with --checkpoints 1 (keeping snapshots draws no random numbers)."""
    from surrogates.base import kept_checkpoints

    cfg = TrainConfig(lr=1e-2, batch_size=16, max_epochs=8, patience=8, seed=1, threads=1, progress=False,
                      checkpoints=3)
    metrics = train_surrogate(prepared, "sasrec", tmp_path / "k3", TINY_MODEL, cfg)
    best = metrics["best_epoch"]
    assert best >= 3   # the rule is learnt over several epochs: there are two epochs before the best
    assert metrics["checkpoints"] == [best - 2, best - 1]
    folders = kept_checkpoints(tmp_path / "k3")
    assert [f.name for f in folders] == [f"epoch-{best - 2:03d}", f"epoch-{best - 1:03d}"]
    data = PreparedData(prepared)
    for folder, epoch in zip(folders, metrics["checkpoints"]):
        recorded = metrics["history"][epoch - 1]
        assert recorded["epoch"] == epoch
        again = evaluate_scorer(load_surrogate(folder).score_histories, data.eval_split("valid"), N_ITEMS)
        assert again["ndcg@10"] == pytest.approx(recorded["valid_ndcg@10"], abs=1e-9)
    one = train_surrogate(prepared, "sasrec", tmp_path / "k1", TINY_MODEL, TrainConfig(**{**cfg.__dict__,
                                                                                        "checkpoints": 1}))
    assert one["checkpoints"] == [] and kept_checkpoints(tmp_path / "k1") == []
    a, b = load_surrogate(tmp_path / "k3"), load_surrogate(tmp_path / "k1")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_same_seed_same_model(prepared, tmp_path):
    cfg = TrainConfig(lr=5e-3, batch_size=16, max_epochs=2, patience=2, seed=3, threads=1, progress=False)
    fields = {**TINY_MODEL, "dropout": 0.2, "loss": "bce"}
    m1 = train_surrogate(prepared, "sasrec", tmp_path / "a", fields, cfg)
    m2 = train_surrogate(prepared, "sasrec", tmp_path / "b", fields, cfg)
    a, b = load_surrogate(tmp_path / "a"), load_surrogate(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert m1["valid"] == m2["valid"] and m1["test"] == m2["test"]
    other = train_surrogate(prepared, "sasrec", tmp_path / "c", fields,
                            TrainConfig(**{**cfg.__dict__, "seed": 4}))
    c = load_surrogate(tmp_path / "c")
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)
    assert other["n_samples"] == 80


def test_same_seed_same_dcrec_on_two_threads(prepared, tmp_path):
    """DCRec's graph views go through CSR products on the CPU (MKL, threaded): still the same bits twice."""
    cfg = TrainConfig(lr=5e-3, batch_size=16, max_epochs=2, patience=2, seed=3, threads=2, progress=False)
    m1 = train_surrogate(prepared, "dcrec", tmp_path / "a", TINY_MODEL, cfg)
    m2 = train_surrogate(prepared, "dcrec", tmp_path / "b", TINY_MODEL, cfg)
    a, b = load_surrogate(tmp_path / "a"), load_surrogate(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert m1["valid"] == m2["valid"] and m1["test"] == m2["test"]


def test_cli_end_to_end(prepared, tmp_path):
    out = tmp_path / "cli-model"
    args = ["train-surrogate", str(prepared), "--model", "sasrec", "--out", str(out), "--hidden", "16",
            "--n-blocks", "1", "--max-len", "10", "--max-epochs", "2", "--patience", "1", "--batch-size", "32",
            "--loss", "bce", "--seed", "5", "--threads", "1", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "test" in result.output and "best epoch" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["valid"]) == METRIC_KEYS and set(metrics["test"]) == METRIC_KEYS
    assert {"epochs", "best_epoch", "seconds", "seconds_per_epoch"} <= set(metrics)
    assert metrics["device"] == str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))   # --device auto
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "sasrec"
    assert config["config"]["hidden"] == 16 and config["config"]["loss"] == "bce"
    assert config["config"]["seed"] == 5 and config["config"]["n_items"] == N_ITEMS

    # an existing output is never clobbered without --overwrite, and the error is one line
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2
    assert "already exists" in again.output and "Traceback" not in again.output


def test_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train-surrogate", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a prepared data folder" in result.output
    assert not (tmp_path / "o").exists()
    prepared = make_prepared(tmp_path / "p")
    result = runner.invoke(main, ["train-surrogate", str(prepared), "--out", str(tmp_path / "o"), "--lr", "0"])
    assert result.exit_code == 2 and "lr must be positive" in result.output
    assert not (tmp_path / "o").exists()


def test_a_crash_leaves_no_output(prepared, tmp_path, monkeypatch):
    import surrogates.train as training

    def boom(*args, **kwargs):
        raise DealrecError("simulated failure while saving")
    monkeypatch.setattr(training, "save_surrogate", boom)
    with pytest.raises(DealrecError):
        train_surrogate(prepared, "sasrec", tmp_path / "out", TINY_MODEL,
                        TrainConfig(max_epochs=1, threads=1, progress=False))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_the_stop_reason_is_recorded_and_prune_has_no_clock_budget(prepared, tmp_path):
    """The default prune must not depend on the machine's speed: no wall-clock budget unless asked, and a
    run that a budget did stop says so."""
    import inspect

    from dealrec.prune import run_prune

    assert inspect.signature(run_prune).parameters["surrogate_minutes"].default is None
    cfg = TrainConfig(lr=5e-3, batch_size=16, max_epochs=2, patience=5, seed=3, threads=1, progress=False)
    assert train_surrogate(prepared, "sasrec", tmp_path / "a", TINY_MODEL, cfg)["stopped_by"] == "max epochs"
    budget = TrainConfig(**{**cfg.__dict__, "max_minutes": 0.0})
    assert train_surrogate(prepared, "sasrec", tmp_path / "b", TINY_MODEL, budget)["stopped_by"] == "time budget"


def test_default_thread_count_is_fixed_not_the_machines(prepared, tmp_path, monkeypatch):
    """The weights depend on the thread count, so the default must not follow the machine: training
    with the default on a 'machine' whose torch starts with 1 or with 3 threads gives the same bytes,
    and the caller's thread count is given back."""
    import hashlib
    import os

    import torch

    from surrogates.train import DEFAULT_THREADS, TrainConfig, train_surrogate

    data = prepared
    digests = []
    for machine in (1, 3):   # cores, as the process sees them
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=machine: set(range(n)), raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda n=machine: n)
        torch.set_num_threads(machine)
        out = tmp_path / f"s{machine}"
        metrics = train_surrogate(data, "sasrec", out, train_cfg=TrainConfig(max_epochs=1, progress=False))
        assert torch.get_num_threads() == machine and metrics["threads"] == DEFAULT_THREADS
        # what else decides the float sums is recorded: the CPU's instruction set torch picked kernels for
        assert metrics["float_platform"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert metrics["float_platform"]["cpu_count"] == machine
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    torch.set_num_threads(1)
    assert digests[0] == digests[1]


# ---- bucketed batches (issue 15: an epoch should cost its real positions, not its padding)

def _skewed_samples(n=300, seed=0):
    """Mostly short histories and a few long ones, as real logs have (Games: mean 5, max 657)."""
    from dealrec_core.data import Samples
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.zipf(1.6, n) - 1, 40)
    history = [rng.integers(1, N_ITEMS + 1, size=k).astype(np.int32) for k in lengths]
    return Samples(np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64) + 7, history,
                   rng.integers(1, N_ITEMS + 1, size=n).astype(np.int32))


@pytest.mark.parametrize("n,batch_size,pool", [(300, 16, 4), (257, 16, 3), (5, 16, 2), (64, 16, 1)])
def test_every_epoch_takes_each_sample_once_in_as_many_batches_as_random(n, batch_size, pool):
    from surrogates.train import epoch_batches
    widths = np.random.default_rng(1).integers(1, 30, size=n)
    for batching in ("random", "bucketed"):
        batches = epoch_batches(n, batch_size, np.random.default_rng(2), batching, widths, pool_batches=pool)
        assert len(batches) == -(-n // batch_size)
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        assert sum(len(b) < batch_size for b in batches) == (n % batch_size > 0)   # one short batch at most
        again = epoch_batches(n, batch_size, np.random.default_rng(2), batching, widths, pool_batches=pool)
        assert all(np.array_equal(x, y) for x, y in zip(batches, again))   # a pure function of the seed


def test_random_batches_are_the_slices_of_one_permutation_as_before():
    """The default keeps the trained bytes of every earlier surrogate: one permutation an epoch, sliced."""
    from surrogates.train import epoch_batches
    batches = epoch_batches(100, 32, np.random.default_rng(5))
    order = np.random.default_rng(5).permutation(100)
    assert [b.tolist() for b in batches] == [order[i:i + 32].tolist() for i in range(0, 100, 32)]


def test_bucketed_batches_pad_far_less_and_still_mix_the_data():
    from surrogates.train import epoch_batches
    samples = _skewed_samples(2000)
    widths = np.array([len(h) + 1 for h in samples.history])

    def padding(batches):
        return 1 - sum(widths[b].sum() for b in batches) / sum(len(b) * widths[b].max() for b in batches)

    rng = np.random.default_rng(0)
    random_pad = padding(epoch_batches(2000, 32, rng))
    bucketed = epoch_batches(2000, 32, rng, "bucketed", widths, pool_batches=16)
    assert padding(bucketed) < 0.25 * random_pad
    # batches come from all over the data in a shuffled order, not the sorted order of the whole set
    maxima = np.array([widths[b].max() for b in bucketed])
    assert not np.all(np.diff(maxima) >= 0)
    assert np.mean([np.ptp(b) for b in bucketed]) > 2000 / 4


@pytest.mark.parametrize("weighting", ["position", "sample"])
def test_bucketed_scaling_sums_to_the_risk_of_all_samples(weighting):
    """Summed over an epoch, the scaled batch losses are n_batches x the risk over every sample at once
    (every position, or every sample, weighing the same), whatever the batches' sizes in positions;
    so are their gradients (the sum is linear)."""
    from surrogates.registry import build_surrogate
    from surrogates.train import EpochPlan
    samples = _skewed_samples(150)
    model = build_surrogate("sasrec", n_items=N_ITEMS, **TINY_MODEL)
    model.eval()
    plan = EpochPlan(model, samples, batch_size=16, batching="bucketed", weighting=weighting)
    epoch = plan.batches(np.random.default_rng(0))
    total = sum(model.training_loss(model.collate(samples.subset(idx)), weighting) * scale for idx, scale in epoch)
    whole = model.training_loss(model.collate(samples), weighting)
    assert len(epoch) == plan.n_batches
    torch.testing.assert_close(total / plan.n_batches, whole, rtol=1e-5, atol=1e-6)
    g_total = torch.autograd.grad(total / plan.n_batches, model.influence_block().weight)[0]
    g_whole = torch.autograd.grad(whole, model.influence_block().weight)[0]
    torch.testing.assert_close(g_total, g_whole, rtol=1e-4, atol=1e-6)
    # the unscaled means would not: batches of long histories are under-weighted per position
    if weighting == "position":
        unscaled = sum(model.training_loss(model.collate(samples.subset(idx)), weighting) for idx, _ in epoch)
        assert abs(float((unscaled / plan.n_batches - whole).detach())) > 1e-3


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec", "dcrec"])
def test_bucketed_training_runs_for_every_model_and_records_its_padding(prepared, tmp_path, model_name):
    from surrogates.registry import surrogate_class
    fields = {k: v for k, v in TINY_MODEL.items() if k in {f.name for f in
                                                             surrogate_class(model_name).config_class.option_fields()}}
    shares = {}
    for batching in ("random", "bucketed"):
        cfg = TrainConfig(lr=5e-3, batch_size=8, max_epochs=2, patience=2, seed=0, threads=1, progress=False,
                          batching=batching)
        metrics = train_surrogate(prepared, model_name, tmp_path / f"{model_name}-{batching}", fields, cfg)
        assert metrics["train_config"]["batching"] == batching
        shares[batching] = metrics["history"][0]["padding_share"]
    assert 0 <= shares["bucketed"] < shares["random"]


def test_cli_takes_batching_and_refuses_an_unknown_one(prepared, tmp_path):
    args = ["train-surrogate", str(prepared), "--out", str(tmp_path / "m"), "--max-epochs", "1", "--quiet",
            "--hidden", "16", "--n-blocks", "1", "--ffn-hidden", "32", "--max-len", "10"]
    result = CliRunner().invoke(main, args + ["--batching", "bucketed"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["train_config"]["batching"] == "bucketed"
    bad = CliRunner().invoke(main, args[:3] + [str(tmp_path / "m2"), "--batching", "sorted"])
    assert bad.exit_code != 0 and "sorted" in bad.output
    with pytest.raises(DealrecError, match="batching"):
        TrainConfig(batching="sorted")


def test_the_defaults_are_the_models_sasrec_bucketed_with_the_softmax_by_blocks_on_the_cpu(prepared, tmp_path):
    """batching and ce_chunk left at None are the model's: SASRec bucketed with blocks of CE_CHUNK_CPU items on
    the CPU (0 with the BCE loss, whose loss is no full softmax), BERT4Rec and DCRec random batches and one
    product. metrics.json records what ran; an explicit value is honoured."""
    from surrogates.registry import surrogate_class
    from surrogates.softmax import CE_CHUNK_CPU, default_ce_chunk

    assert TrainConfig().batching is None and TrainConfig().ce_chunk is None
    assert default_ce_chunk("cpu") == CE_CHUNK_CPU and default_ce_chunk("cuda:0") == 0
    assert default_ce_chunk("cuda:0", surrogate_class("sasrec")) == 0
    runs = {"sasrec": ("sasrec", {}, {}), "sasrec-bce": ("sasrec", {"loss": "bce"}, {}),
            "sasrec-asked": ("sasrec", {}, {"batching": "random", "ce_chunk": 0}),
            "bert4rec": ("bert4rec", {}, {}), "dcrec": ("dcrec", {}, {})}
    ran = {}
    for name, (model_name, extra, asked) in runs.items():
        fields = {k: v for k, v in {**TINY_MODEL, **extra}.items()
                  if k in {f.name for f in surrogate_class(model_name).config_class.option_fields()}}
        cfg = TrainConfig(max_epochs=1, seed=0, threads=1, progress=False, **asked)
        metrics = train_surrogate(prepared, model_name, tmp_path / name, fields, cfg)
        ran[name] = (metrics["train_config"]["batching"], metrics["train_config"]["ce_chunk"])
    assert ran == {"sasrec": ("bucketed", CE_CHUNK_CPU), "sasrec-bce": ("bucketed", 0),
                   "sasrec-asked": ("random", 0), "bert4rec": ("random", 0), "dcrec": ("random", 0)}


def test_prune_retrains_a_surrogate_of_other_batching_or_blocks(prepared, tmp_path):
    from dealrec.prune import _stale_surrogate
    from surrogates.softmax import CE_CHUNK_CPU

    cfg = TrainConfig(max_epochs=1, seed=0, threads=1, progress=False)
    train_surrogate(prepared, "sasrec", tmp_path / "sur", TINY_MODEL, cfg)
    folder = tmp_path / "sur"
    recorded = json.loads((folder / "metrics.json").read_text())
    recorded["model_fields"] = {}   # as prune trains it (the default SASRec)
    recorded["threads"] = 2         # prune's fixed count; only batching and blocks are under test
    (folder / "metrics.json").write_text(json.dumps(recorded))
    cfg = TrainConfig(max_epochs=1, seed=0, progress=False)
    assert _stale_surrogate(folder, PreparedData(prepared), cfg) is None
    for field, old, wanted in (("batching", "random", "bucketed"), ("ce_chunk", 0, CE_CHUNK_CPU),
                               ("patience", 3, 10)):   # 80 samples: the default patience is the ceiling
        changed = {**recorded, "train_config": {**recorded["train_config"], field: old}}
        (folder / "metrics.json").write_text(json.dumps(changed))
        assert _stale_surrogate(folder, PreparedData(prepared), cfg) == \
            f"the surrogate there was trained with {field}={old}, not {wanted}"
    legacy = {**recorded, "train_config": {k: v for k, v in recorded["train_config"].items()
                                           if k not in ("batching", "ce_chunk", "patience")}}
    (folder / "metrics.json").write_text(json.dumps(legacy))   # trained before the options: random, one product
    assert "batching=random" in _stale_surrogate(folder, PreparedData(prepared), cfg)
    # the kept epochs: a surrogate that kept fewer than the influence asks for is trained again; more is fine,
    # and one from before the option kept none but the best
    for kept, asked, stale in ((1, 3, True), (3, 3, False), (3, 1, False)):
        (folder / "metrics.json").write_text(json.dumps(
            {**recorded, "train_config": {**recorded["train_config"], "checkpoints": kept}}))
        reason = _stale_surrogate(folder, PreparedData(prepared), TrainConfig(max_epochs=1, seed=0, progress=False,
                                                                              checkpoints=asked))
        assert reason == (f"the surrogate there kept {kept} epoch(s), and the influence asks for {asked}"
                          if stale else None)
    no_field = {**recorded, "train_config": {k: v for k, v in recorded["train_config"].items() if k != "checkpoints"}}
    (folder / "metrics.json").write_text(json.dumps(no_field))
    assert _stale_surrogate(folder, PreparedData(prepared), TrainConfig(max_epochs=1, seed=0, progress=False,
                                                                        checkpoints=1)) is None
    assert "kept 1 epoch(s)" in _stale_surrogate(folder, PreparedData(prepared),
                                                 TrainConfig(max_epochs=1, seed=0, progress=False, checkpoints=2))
    assert "kept 1 epoch(s)" in _stale_surrogate(folder, PreparedData(prepared), cfg)   # the default keeps 3


def test_the_default_patience_counts_updates_and_keeps_three_epochs_on_large_logs():
    from surrogates.config import PATIENCE_CEILING, PATIENCE_FLOOR, auto_patience, floor_patience_samples

    # Games (49,156 samples) and the dense cut of docs/selection.md keep the fixed default of before; the
    # short-history cuts wait longer; a tiny log waits the ceiling, never more
    assert [auto_patience(n, 128) for n in (49_156, 45_754, 25_921, 16_720, 80)] == [3, 3, 5, 8, 10]
    floor = floor_patience_samples(128)
    assert floor == 42_625 and auto_patience(floor, 128) == PATIENCE_FLOOR and auto_patience(floor - 1, 128) == 4
    assert auto_patience(10**9, 128) == PATIENCE_FLOOR and auto_patience(1, 1) == PATIENCE_CEILING
    # a larger batch is fewer updates an epoch: more epochs of patience for the same log
    assert auto_patience(20_000, 64) < auto_patience(20_000, 128) < auto_patience(20_000, 256)
    with pytest.raises(DealrecError, match="patience"):
        TrainConfig(patience=0)


def test_training_records_the_patience_it_ran_with(prepared, tmp_path):
    ran = {}
    for name, asked in (("auto", None), ("given", 2)):
        cfg = TrainConfig(lr=5e-3, batch_size=16, max_epochs=1, patience=asked, seed=3, threads=1, progress=False)
        ran[name] = train_surrogate(prepared, "sasrec", tmp_path / name, TINY_MODEL, cfg)["train_config"]["patience"]
    assert ran == {"auto": 10, "given": 2}   # 80 samples in batches of 16: 5 updates an epoch, the ceiling
    assert len(SampleRows(PreparedData(prepared).samples_dir)) == 80
