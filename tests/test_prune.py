"""``dealrec prune`` end to end on a tiny release-format folder: prepare, train, score, select, export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main

N_USERS, N_ITEMS = 60, 60  # the evaluator ranks a top 50: keep more items than that
WORDS = ["Red", "Blue", "Green", "Silver", "Iron", "Golden", "Shadow", "Crystal"]


def write_release(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    train, valid, test = [], [], []
    for u in range(1, N_USERS + 1):
        n = [1, 2, 3][u % 3] if u <= 9 else int(rng.integers(3, 9))  # one- and two-item users included
        seq = rng.integers(1, N_ITEMS + 1, size=n)
        train.append(f"{u} " + " ".join(map(str, seq)))
        valid.append(f"{u} {int(rng.integers(1, N_ITEMS + 1))}" if u % 2 else f"{u}")
        test.append(f"{u} {int(rng.integers(1, N_ITEMS + 1))}" if u % 3 else f"{u}")
    (folder / "sequential_train.txt").write_text("\n".join(train) + "\n")
    (folder / "sequential_valid.txt").write_text("\n".join(valid) + "\n")
    (folder / "sequential_test.txt").write_text("\n".join(test) + "\n")
    items = [{"item": i, "source_id": f"A{i}", "title": f"Quest of the {WORDS[i % 8]} Kingdom {i}",
              "categories": ["Games"]} for i in range(1, N_ITEMS + 1)]
    (folder / "items.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return folder


def raw_release_and_tiny_tiger(root: Path, encoder_dir=None) -> tuple[Path, Path]:
    """A raw release folder under ``root`` and a tiny TIGER for its items (the effort target's start)."""
    from dealrec_core.data import PreparedData
    from dealrec.prepare import prepare
    from finetune.rqvae import RQVAEConfig
    from finetune.tiger import TigerConfig, build_tiger, save_tiger

    raw = write_release(root / "raw")
    prepare(raw, root / "prepared")
    tiger = build_tiger(PreparedData(root / "prepared"), seed=0,
                        config=TigerConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                                           d_kv=8, dropout=0.1, max_history_items=5),
                        rqvae_config=RQVAEConfig(codebook_size=8, latent_dim=8, hidden_dims=(16,), epochs=5,
                                                 batch_size=64, kmeans_iters=5),
                        encoder_dir=encoder_dir, cache_dir=root / "emb", progress=False)
    save_tiger(tiger, root / "tiger")
    return raw, root / "tiger"


@pytest.fixture(scope="module")
def raw_and_tiger(tmp_path_factory):
    return raw_release_and_tiny_tiger(tmp_path_factory.mktemp("prune"))


def _prune(raw, tiger, out, *extra):
    args = ["prune", str(raw), "--n", "12", "--out", str(out), "--target-init", str(tiger), "--workers", "0",
            "--surrogate-epochs", "2", "--hvp", "cg", "--damping", "0.05", "--lissa-scale", "10",
            "--hessian-samples", "32", "--hvp-batch", "16", "--batch-size", "16", "--effort-batch-size", "16",
            "--shard-size", "32", "--k", "4", "--quiet", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((Path(out) / "manifest.json").read_text())


def test_prune_end_to_end_and_rerun(raw_and_tiger, tmp_path):
    raw, tiger = raw_and_tiger
    out = tmp_path / "run"
    manifest = _prune(raw, tiger, out)
    phases = manifest["prune"]["phases"]
    assert list(phases) == ["prepare", "train_surrogate", "score", "select", "export"]
    assert phases["prepare"]["prepared"] and phases["train_surrogate"]["trained"]
    assert {"capture", "solve", "influence", "effort"} <= set(phases["score"])

    scores = pq.read_table(out / "scores.parquet").to_pydict()
    assert len(scores["sample_id"]) == N_USERS
    assert all(x != 0 for x in scores["influence"])   # one- and two-item users get real scores
    assert all(x > 0 for x in scores["effort"])
    assert {"score", "stratum"} <= set(scores)
    coreset = pq.read_table(out / "coreset.parquet").column("sample_id").to_pylist()
    assert len(set(coreset)) == 12
    assert manifest["target"]["block"].endswith("decoder.block.0.layer.0.SelfAttention.v")
    exported = manifest["exports"]
    assert exported["n_samples"] == 12 and "bigrec" in exported and "tiger" in exported
    alpaca = json.loads((out / exported["bigrec"]).read_text())
    assert len(alpaca) == 12 and {"instruction", "input", "output"} <= set(alpaca[0])

    # the same command again resumes every phase and gives the same bytes
    again = _prune(raw, tiger, out)
    p = again["prune"]["phases"]
    assert p["prepare"].get("resumed") and p["train_surrogate"].get("resumed")
    assert p["score"]["capture"]["ran"] == 0 and p["score"]["effort"]["ran"] == 0
    assert pq.read_table(out / "coreset.parquet").column("sample_id").to_pylist() == coreset
    assert pq.read_table(out / "scores.parquet").to_pydict() == scores


def test_prune_rejects_missing_data(tmp_path):
    result = CliRunner().invoke(main, ["prune", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_prune_into_a_folder_of_other_data_redoes_the_surrogate(raw_and_tiger, tmp_path):
    """Stale state is never reused: a rerun into the same --out on other data trains the surrogate again
    (and says why), and its coreset is the one a fresh run on that data gives."""
    import shutil

    raw, tiger = raw_and_tiger
    other = tmp_path / "other"
    shutil.copytree(raw, other)
    lines = (other / "sequential_train.txt").read_text().splitlines()
    lines[20] = lines[20].split()[0] + " 5 6 7 8 9"   # one user's history changes
    (other / "sequential_train.txt").write_text("\n".join(lines) + "\n")

    out = tmp_path / "run"
    _prune(raw, tiger, out)
    again = _prune(other, tiger, out)
    phase = again["prune"]["phases"]["train_surrogate"]
    assert not again["prune"]["phases"]["prepare"].get("resumed")
    assert not phase.get("resumed") and "other data" in phase["redone"]
    fresh = _prune(other, tiger, tmp_path / "fresh")
    assert fresh["prune"]["phases"]["train_surrogate"].get("redone") is None
    for name in ("scores.parquet", "coreset.parquet"):
        assert pq.read_table(out / name).to_pydict() == pq.read_table(tmp_path / "fresh" / name).to_pydict()

    # other training options are stale state too
    epochs = _prune(other, tiger, out, "--surrogate-epochs", "1")["prune"]["phases"]["train_surrogate"]
    assert "max_epochs=2, not 1" in epochs["redone"]


def test_prune_scores_effort_only_where_it_weighs(raw_and_tiger, tmp_path):
    """--target left out: none at lambda 0 (the default: effort would change nothing), TIGER with another lambda
    or an effort option (--target-init, --llm); a given --target is kept."""
    from dealrec.prune import prune_target

    assert prune_target() == "none" and prune_target(lam=0.0) == "none"
    assert prune_target(lam=0.3) == "tiger" and prune_target(target_init="CKPT") == "tiger"
    assert prune_target(llm="LLM") == "tiger" and prune_target("none", lam=0.3) == "none"
    assert prune_target("tiger") == "tiger"
    raw, tiger = raw_and_tiger
    args = ["prune", str(raw), "--n", "12", "--out", str(tmp_path / "run"), "--workers", "0", "--surrogate-epochs",
            "2", "--hvp", "cg", "--damping", "0.05", "--hessian-samples", "32", "--hvp-batch", "16",
            "--batch-size", "16", "--shard-size", "32", "--k", "4", "--quiet"]   # no effort: its batch of 64 is no bound
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "effort" not in manifest["prune"]["phases"]["score"] and "semantic_ids" not in manifest["prune"]["phases"]["score"]
    assert manifest["prune"]["phases"]["select"]["method"] == "influence"
    assert "effort" not in pq.read_table(tmp_path / "run" / "scores.parquet").column_names
    assert manifest["options"]["prune"]["target"] is None   # left out, recorded as such: a replay decides again


def test_prune_with_influence_checkpoints_trains_a_surrogate_that_keeps_them(raw_and_tiger, tmp_path):
    """By default (``--influence-checkpoints 3``) prune trains its surrogate keeping the epochs before the best and
    the scores are taken at their mean weights (what that surrogate kept); a surrogate left by a prune that asked
    for the best epoch alone, which kept none, is trained again, saying why."""
    from surrogates.base import kept_checkpoints

    raw, tiger = raw_and_tiger
    out = tmp_path / "run"
    _prune(raw, tiger, out, "--surrogate-epochs", "4", "--influence-checkpoints", "1")
    manifest = _prune(raw, tiger, out, "--surrogate-epochs", "4")
    phases = manifest["prune"]["phases"]
    assert phases["train_surrogate"]["redone"] == \
        "the surrogate there kept 1 epoch(s), and the influence asks for 3"
    metrics = json.loads((out / "surrogate" / "metrics.json").read_text())
    assert metrics["train_config"]["checkpoints"] == 3
    kept = [p.name for p in kept_checkpoints(out / "surrogate")]
    assert kept == [f"epoch-{e:03d}" for e in metrics["checkpoints"]]
    assert len(kept) == min(2, metrics["best_epoch"] - 1)
    assert phases["score"]["checkpoints"]["epochs"] == kept
    assert phases["score"]["checkpoints"]["mean"] == "weights"
    assert manifest["parameters"]["influence_checkpoints"] == 3
