"""TIGER: batching, losses, constrained beam search, checkpoints, and the command end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import EvalSplit, PreparedData, samples_table, write_parquet_atomic, write_samples
from dealrec_core.evaluate import PER_USER_FILE, ranking_metrics, read_per_user, stopping_split
from finetune.rqvae import semantic_ids_from_codes
from finetune.tiger import TigerConfig, TigerModel, load_tiger, save_tiger
from finetune.tiger_train import TigerTrainConfig, tiger_per_user, train_tiger, training_pairs

TINY = TigerConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
                   dropout=0.0, max_history_items=5)


def tiny_model(n_items=60, codebook=4, seed=0) -> TigerModel:
    codes = np.random.default_rng(seed).integers(0, codebook, size=(n_items, 3))
    sem, _ = semantic_ids_from_codes(codes, codebook)
    return TigerModel(TINY, sem, seed=seed)


def exact_ranking(model: TigerModel, history, exclude=True) -> tuple[np.ndarray, np.ndarray]:
    """Every item scored by its teacher-forced joint log-probability (the beam search's yardstick)."""
    items = np.arange(1, model.n_items + 1)
    with torch.no_grad():
        logp = -4 * model.sample_losses(model.encode([history] * len(items), items)).numpy()
    if exclude:
        logp[np.isin(items, history)] = -np.inf
    order = np.argsort(-logp, kind="stable")
    return items[order], logp[order]


def test_encode_layout_and_empty_history():
    model = tiny_model()
    batch = model.encode([[3, 5], [], list(range(1, 12))], [7, 8, 9])
    assert batch["input_ids"].shape == (3, 5 * 4 + 1)               # 5 most recent items + eos
    assert batch["input_ids"][1, 0] == 1 and batch["attention_mask"][1].sum() == 1   # empty: eos only
    ids = model.item_tokens[torch.tensor([7, 8, 9])]
    assert torch.equal(batch["labels"], ids)
    # each position of the ID uses its own token range
    for lv in range(4):
        lo = model.level_offsets[lv]
        assert ((batch["labels"][:, lv] >= lo) & (batch["labels"][:, lv] < lo + model.level_sizes[lv])).all()
    # the 11-item history keeps its 5 most recent items
    assert torch.equal(batch["input_ids"][2, :20], model.item_tokens[torch.arange(7, 12)].reshape(-1))


def test_sample_losses_do_not_depend_on_batch_or_padding():
    model = tiny_model().eval()
    rng = np.random.default_rng(1)
    hist = [list(rng.integers(1, 61, size=rng.integers(0, 8))) for _ in range(9)]
    tgt = rng.integers(1, 61, size=9)
    together = model.sample_losses(model.encode(hist, tgt))
    alone = torch.cat([model.sample_losses(model.encode(hist[i:i + 1], tgt[i:i + 1])) for i in range(9)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.shape == (9,) and (together > 0).all()


def test_beam_search_returns_only_valid_ids_and_matches_exhaustive_search():
    model = tiny_model(n_items=80, codebook=4)
    # train a little so that the distribution is far from uniform
    opt = torch.optim.Adam(model.t5.parameters(), lr=3e-2)
    rng = np.random.default_rng(2)
    hist = [list(rng.integers(1, 81, size=rng.integers(0, 6))) for _ in range(64)]
    tgt = (np.array([h[-1] if h else 1 for h in hist]) % 80) + 1
    for _ in range(30):
        loss = model.sample_losses(model.encode(hist, tgt)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    users = hist[:12]
    # beam = every prefix of the trie: the beam search is exact
    ranked = model.rank(users, k=20, beam_size=64, batch_size=5)
    for i, h in enumerate(users):
        row = ranked[i]
        assert ((row >= 1) & (row <= 80)).all(), "an ID outside the catalogue came back"
        assert len(set(row.tolist())) == len(row)
        assert not set(row.tolist()) & set(h)
        exact, _ = exact_ranking(model, h)
        assert row.tolist() == exact[:20].tolist()
    # a narrow beam is approximate but still returns only real items
    narrow = model.rank(users, k=10, beam_size=10, batch_size=4)
    assert ((narrow >= 1) & (narrow <= 80)).all()
    # asking for more items than exist pads with 0
    wide = model.rank(users[:2], k=100, beam_size=100)
    assert (wide[:, 80 - 5:] == 0).any() and set(wide[0][wide[0] > 0]).issubset(set(range(1, 81)))


def test_checkpoint_round_trip_gives_identical_rankings(tmp_path):
    model = tiny_model().eval()
    with torch.no_grad():
        for p in model.t5.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hist = [[1, 2, 3], [], [10, 11]]
    save_tiger(model, tmp_path / "ckpt")
    loaded = load_tiger(tmp_path / "ckpt")
    assert np.array_equal(loaded.semantic_ids.codes, model.semantic_ids.codes)
    assert np.array_equal(model.rank(hist, k=10), loaded.rank(hist, k=10))
    batch = model.encode(hist, [4, 5, 6])
    assert torch.equal(model.sample_losses(batch), loaded.sample_losses(batch))


def test_a_checkpoint_is_the_same_bytes_from_any_process_and_keeps_its_ties(tmp_path):
    """The same weights, saved by two processes (Python's string hashing differs between them), give the same
    model.safetensors; the tied embedding is stored once and is tied again after loading; a checkpoint written by
    safetensors' save_model (dealrec before session 21, with its ties in header metadata) still loads."""
    import subprocess
    import sys

    from safetensors.torch import save_model

    model = tiny_model().eval()
    with torch.no_grad():
        for p in model.t5.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_tiger(model, tmp_path / "ckpt")
    code = "import sys; from finetune.tiger import load_tiger, save_tiger; save_tiger(load_tiger(sys.argv[1]), sys.argv[2])"
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"again-{seed}"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt"), str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)})
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1] == (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    loaded = load_tiger(tmp_path / "ckpt")
    shared = loaded.t5.shared.weight
    assert loaded.t5.encoder.embed_tokens.weight is shared and loaded.t5.decoder.embed_tokens.weight is shared
    assert torch.equal(shared, model.t5.shared.weight)
    (tmp_path / "old").mkdir()
    save_model(model.t5, str(tmp_path / "old" / "model.safetensors"))   # the old writer, metadata and all
    for name in ("config.json", "semantic_ids.json", "semantic_ids.safetensors"):
        (tmp_path / "old" / name).write_bytes((tmp_path / "ckpt" / name).read_bytes())
    old = load_tiger(tmp_path / "old")
    hist = [[1, 2, 3], [], [10, 11]]
    assert np.array_equal(old.rank(hist, k=10), loaded.rank(hist, k=10))


def test_training_pairs_expand_prefixes():
    from dealrec_core.data import Samples
    s = Samples(np.arange(3), np.arange(3), [np.array([5, 6], np.int32), np.array([], np.int32),
                                             np.array([9], np.int32)], np.array([7, 8, 4], np.int32))
    hist, tgt = training_pairs(s, expand_prefixes=True)
    assert [list(h) for h in hist] == [[5], [5, 6], [], [9]]
    assert tgt.tolist() == [6, 7, 8, 4]
    hist, tgt = training_pairs(s, expand_prefixes=False)
    assert tgt.tolist() == [7, 8, 4] and [list(h) for h in hist] == [[5, 6], [], [9]]


# ---------------------------------------------------------------------- end to end on a tiny data set

def make_prepared(root, n_items=40, n_users=60, seed=0):
    """A tiny prepared-data folder where users walk through items in order (learnable)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        start, length = rng.integers(1, n_items - 8), rng.integers(2, 7)
        seqs.append(list(range(start, start + length)))
    write_samples(samples_table(np.arange(n_users), np.arange(n_users), [s[:-2] for s in seqs],
                                [s[-2] for s in seqs]), root / "samples")
    titles = [f"game {i} {'racing' if i % 2 else 'puzzle'}" for i in range(1, n_items + 1)]
    write_parquet_atomic(pa.table({"item": pa.array(np.arange(1, n_items + 1), pa.int32()), "title": titles,
                                   "categories": [["Video Games", "PC" if i % 3 else "Xbox"]
                                                  for i in range(n_items)]}), root / "items.parquet")
    (root / "eval").mkdir()
    valid = EvalSplit(np.arange(n_users), [np.array(s[:-1], np.int32) for s in seqs],
                      [np.array([s[-1]], np.int32) for s in seqs])
    test = EvalSplit(np.arange(n_users), [np.array(s, np.int32) for s in seqs],
                     [np.array([s[-1] + 1], np.int32) for s in seqs])
    write_parquet_atomic(valid.to_table(), root / "eval" / "valid.parquet")
    write_parquet_atomic(test.to_table(), root / "eval" / "test.parquet")
    return root


def test_command_trains_on_a_hand_written_coreset_and_reloads(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setenv("DEALREC_CACHE", str(tmp_path / "cache"))
    data_dir = make_prepared(tmp_path / "data")
    # a coreset written by hand: history/target plus the selection's extra columns
    coreset = pa.table({"sample_id": pa.array([3, 10, 20, 30], pa.int64()),
                        "history": pa.array([[1, 2, 3], [], [7], [20, 21, 22]], pa.list_(pa.int32())),
                        "target": pa.array([4, 5, 8, 23], pa.int32()),
                        "score": pa.array([0.1, 0.5, 0.2, 0.9])})
    write_parquet_atomic(coreset, tmp_path / "coreset.parquet")
    out = tmp_path / "out"
    args = ["finetune", "tiger", "--data", str(data_dir), "--train", str(tmp_path / "coreset.parquet"),
            "--out", str(out), "--encoder", str(tiny_encoder), "--d-model", "16", "--layers", "1",
            "--rqvae-epochs", "3", "--max-epochs", "3", "--eval-every-steps", "1", "--expand-prefixes", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert set(metrics[split]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}
        assert all(0.0 <= v <= 1.0 for v in metrics[split].values())
    assert metrics["train_samples"] == 4 and metrics["train_pairs"] == 8 and 1 <= metrics["epochs"] <= 3
    assert metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")   # --device auto
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]   # no temporary folder left
    # the saved model reproduces the reported test metrics
    model = load_tiger(out)
    data = PreparedData(data_dir)
    test = data.eval_split("test")
    ranked = model.rank(test.history, k=50)
    assert ranking_metrics(ranked, test, n_items=data.n_items) == pytest.approx(metrics["test"])
    # "valid" is the users that did not early-stop the run: half of the 60 here (the default 2,000 is capped)
    stop, report = stopping_split(data.eval_split("valid"), TigerTrainConfig.valid_users)
    assert metrics["valid_users"] == {"stop": 30, "report": 30, "held_out": True}
    assert ranking_metrics(model.rank(report.history, k=50), report, n_items=data.n_items) == \
        pytest.approx(metrics["valid"])
    assert ranking_metrics(model.rank(stop.history, k=50), stop, n_items=data.n_items) != \
        pytest.approx(metrics["valid"])
    # each reported user's metrics beside them: the same users, means equal to metrics.json's; the checkpoint
    # ranks them again to the same values (what compare does for a run made before the file)
    per_user = read_per_user(out / PER_USER_FILE)
    assert list(per_user) == ["valid", "test"]
    assert sorted(per_user["valid"].users) == sorted(report.user) and len(per_user["test"]) == len(test)
    for split in ("valid", "test"):
        assert per_user[split].means() == pytest.approx(metrics[split], abs=1e-12)
    again = tiger_per_user(out, data_dir)
    for split in ("valid", "test"):
        assert np.array_equal(again[split].users, per_user[split].users)
        assert all(np.array_equal(again[split].values[k], per_user[split].values[k]) for k in per_user[split].values)
    assert len(set(map(tuple, model.semantic_ids.codes[1:].tolist()))) == data.n_items
    # --init continues from the checkpoint (same semantic IDs, no encoder needed)
    res = CliRunner().invoke(main, ["finetune", "tiger", "--data", str(data_dir), "--train", str(data_dir / "samples"),
                                    "--out", str(tmp_path / "out2"), "--init", str(out), "--max-epochs", "1",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(load_tiger(tmp_path / "out2").semantic_ids.codes, model.semantic_ids.codes)
    # an existing output is not overwritten without --overwrite
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "already exists" in res.output


def test_command_rejects_bad_training_file(tmp_path, tiny_encoder):
    data_dir = make_prepared(tmp_path / "data")
    bad = pa.table({"history": pa.array([[1, 2]], pa.list_(pa.int32())), "target": pa.array([999], pa.int32())})
    write_parquet_atomic(bad, tmp_path / "bad.parquet")
    res = CliRunner().invoke(main, ["finetune", "tiger", "--data", str(data_dir), "--train",
                                    str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2
    assert "bad.parquet" in res.output and "target" in res.output and "999" in res.output
    assert not (tmp_path / "o").exists()
    nohist = pa.table({"target": pa.array([3], pa.int32())})
    write_parquet_atomic(nohist, tmp_path / "nohist.parquet")
    res = CliRunner().invoke(main, ["finetune", "tiger", "--data", str(data_dir), "--train",
                                    str(tmp_path / "nohist.parquet"), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2 and "history" in res.output
    for option, value in (("--dropout", "1.5"), ("--warmup-steps", "-3"), ("--valid-users", "-1")):
        res = CliRunner().invoke(main, ["finetune", "tiger", "--data", str(data_dir), "--train",
                                        str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o"), option, value])
        assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output
        assert not (tmp_path / "o").exists()


def test_train_tiger_learns_a_walk(tmp_path):
    """On data where the next item is always the last one + 1, training must beat an untrained model."""
    data = PreparedData(make_prepared(tmp_path / "data", n_items=30, n_users=120, seed=3))
    codes = np.stack([np.arange(30) // 8, (np.arange(30) // 2) % 4, np.arange(30) % 2], 1)
    sem, _ = semantic_ids_from_codes(codes, 8)
    cfg = TigerConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16,
                      dropout=0.0, max_history_items=3)
    model = TigerModel(cfg, sem, seed=0)
    test = data.eval_split("test")
    untrained = ranking_metrics(model.rank(test.history, k=50), test)
    result = train_tiger(model, data.samples(), data, TigerTrainConfig(max_epochs=60, lr=1e-2, batch_size=64,
                                                                        eval_every_steps=10, patience=100,
                                                                        progress=False))
    assert result["test"]["recall@10"] > untrained["recall@10"] + 0.3
    assert result["test"]["recall@10"] > 0.6
