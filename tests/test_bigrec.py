"""BIGRec end to end on tiny local models (Llama, Qwen2, GPT-2 shapes) through the CLI, plus the
properties the pipeline rests on: micro-batch invariance of a step, grounding ties, bad input."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import TrainerCallback

from dealrec.cli import main
from dealrec_core.errors import DealrecError
from dealrec_core.data import EvalSplit, samples_table, write_samples
from dealrec_core.evaluate import evaluate_scorer
from finetune.bigrec import BigrecConfig, Catalogue, embed_texts, grounded_per_user
from finetune.lora_train import build_trainer, n_loss_tokens, token_loss_sum, train_lora
from finetune.llm import attach_lora, load_causal_lm
from finetune.prompts import PromptTemplate, encode_example
from tiny_lm import make_tiny_causal_lm

WORDS = ["Mario", "Zelda", "Halo", "Fable", "Doom", "Myst", "Tetris", "Sonic", "Kirby", "Metroid",
         "Portal", "Braid", "Limbo", "Spore", "Rayman", "Pikmin"]
# 50 items (the evaluator's largest K); items 47..50 repeat the titles of items 1..4 (editions
# sharing a title)
TITLES = [""] + [f"{WORDS[i % 16]} {['Quest', 'Racing', 'Legends'][i % 3]} {i // 16 + 1}" for i in range(46)]
TITLES += TITLES[1:5]
N_ITEMS = len(TITLES) - 1
METRIC_KEYS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}


def _write_prepared(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "eval").mkdir(parents=True)
    pq.write_table(pa.table({"item": pa.array(np.arange(1, N_ITEMS + 1), pa.int32()),
                             "title": TITLES[1:]}), root / "items.parquet")
    seqs = [rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(1, 9)), replace=False) for _ in range(24)]
    write_samples(samples_table(np.arange(24), np.arange(24), [s[:-1] for s in seqs], [s[-1] for s in seqs]),
                  root / "samples")
    for name in ("valid", "test"):
        # ground truth outside the history (a history item can never be hit)
        targets = [rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), s), size=int(rng.integers(0, 3)),
                              replace=False) for s in seqs]
        pq.write_table(EvalSplit(np.arange(24), [s.astype(np.int32) for s in seqs],
                                 [t.astype(np.int32) for t in targets]).to_table(), root / "eval" / f"{name}.parquet")
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bigrec")


@pytest.fixture(scope="module")
def prepared(workdir):
    return _write_prepared(workdir / "prepared")


@pytest.fixture(scope="module")
def coreset(workdir, prepared):
    # a coreset: some rows of the samples table with extra score columns, one file
    table = pq.read_table(prepared / "samples" / "part-00000.parquet").slice(0, 16)
    table = table.append_column("score", pa.array(np.linspace(0, 1, 16)))
    pq.write_table(table, workdir / "coreset.parquet")
    return workdir / "coreset.parquet"


@pytest.fixture(scope="module")
def tiny_models(workdir):
    return {kind: make_tiny_causal_lm(kind, TITLES[1:], workdir / kind) for kind in ("llama", "qwen2", "gpt2")}


def _run(args):
    return CliRunner().invoke(main, ["finetune", "bigrec", *map(str, args)])


QUICK = ["--batch-size", 8, "--micro-batch-size", 4, "--epochs", 2, "--max-new-tokens", 8,
         "--eval-batch-size", 8, "--max-tokens", 400]


@pytest.fixture(scope="module")
def e2e(tiny_models, prepared, coreset, workdir):
    """One CLI run per model family, made on first use and shared by the tests of this module."""
    runs = {}

    def run(kind):
        if kind not in runs:
            out = workdir / f"out-{kind}"
            result = _run(["--llm", tiny_models[kind], "--data", prepared, "--train", coreset, "--out", out,
                           "--lr", 1e-3, *QUICK])
            assert result.exit_code == 0, result.output
            runs[kind] = out
        return runs[kind]
    return run


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_end_to_end_same_command_for_every_family(kind, e2e, workdir):
    out = e2e(kind)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert set(metrics[split]) == METRIC_KEYS
        assert all(0.0 <= v <= 1.0 for v in metrics[split].values())
        # with 50 items, the top 50 hold every rankable item
        assert metrics[split]["recall@50"] == pytest.approx(1.0)
    assert metrics["steps"] == 4 and metrics["epochs"] == pytest.approx(2.0)  # 16 samples / 8 per step
    manifest = json.loads((out / "manifest.json").read_text())
    expected_targets = ["c_attn"] if kind == "gpt2" else ["q_proj", "v_proj"]
    assert manifest["lora"]["target_modules"] == expected_targets
    assert manifest["lora"]["r"] == 8 and manifest["lora"]["alpha"] == 16
    assert len(manifest["training"]["valid_losses"]) == 2
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero: training moved it
    gens = pq.read_table(out / "generations" / "test.parquet")
    assert gens.num_rows == metrics["eval_users"]["test"] > 0
    assert not list(workdir.glob(f".out-{kind}.tmp-*"))


def test_adapter_is_loaded_before_training(e2e, tiny_models, prepared, coreset, workdir):
    first = e2e("llama")
    out = workdir / "out-continued"
    result = _run(["--llm", tiny_models["llama"], "--data", prepared, "--train", coreset, "--out", out,
                   "--adapter", first / "adapter", "--max-steps", 1, "--lr", 0, "--max-users", 4, *QUICK])
    assert result.exit_code == 0, result.output
    # with lr 0 the continued adapter is exactly the one it started from
    before = load_file(first / "adapter" / "adapter_model.safetensors")
    after = load_file(out / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def _lora(tiny_models, b_scale=0.1):
    torch.manual_seed(0)
    peft_model = attach_lora(load_causal_lm(tiny_models["llama"])[0], dropout=0.0)
    # B starts at zero; give it values so that A's gradient is not zero either
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * b_scale)
    return peft_model


def _adapter(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_trainer_step_is_the_mean_token_loss_gradient_whatever_the_micro_batch(tiny_models, tmp_path):
    """One Trainer step with SGD (lr 1) moves the adapter by exactly minus the gradient of the step's mean token
    loss, computed here by autograd on the whole batch at once, for micro-batches of 1, 2, 3 and 6."""
    _, tok = load_causal_lm(tiny_models["llama"])
    examples = [encode_example(tok, TITLES[1 + i:4 + 2 * i], TITLES[30 - i], PromptTemplate(), 400, "all")
                for i in range(6)]
    reference = _lora(tiny_models)
    start = _adapter(reference)
    loss = token_loss_sum(reference, examples, tok.pad_token_id, "cpu") / n_loss_tokens(examples)
    grads = dict(zip(start, torch.autograd.grad(loss, [p for p in reference.parameters() if p.requires_grad])))
    for micro in (1, 2, 3, 6):
        model = _lora(tiny_models)
        cfg = BigrecConfig(batch_size=6, micro_batch_size=micro, max_grad_norm=0.0, max_steps=1, warmup_steps=0,
                           epochs=1)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        build_trainer(model, examples, examples[:2], cfg, tok.pad_token_id, "cpu", tmp_path / f"w{micro}",
                      optimizer=opt).train()
        after = _adapter(model)
        for n in start:
            torch.testing.assert_close(after[n], start[n] - grads[n], rtol=1e-4, atol=1e-6)


class _Crash(TrainerCallback):
    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) == 2:
            raise KeyboardInterrupt("killed during epoch 2")


def test_a_killed_fine_tune_resumes_from_its_checkpoint_to_the_same_adapter(tiny_models, tmp_path):
    _, tok = load_causal_lm(tiny_models["llama"])
    examples = [encode_example(tok, TITLES[1 + i:4 + i], TITLES[30 - i], PromptTemplate(), 400, "all")
                for i in range(8)]
    cfg = BigrecConfig(batch_size=4, micro_batch_size=2, epochs=3, patience=5, lr=1e-2, warmup_steps=0, dropout=0.0)
    inputs = {"what": "the same run"}

    whole = _lora(tiny_models)
    clean = train_lora(whole, examples, examples[:3], cfg, tok.pad_token_id, "cpu", tmp_path / "clean", inputs)
    assert clean.steps == 6 and clean.epochs == pytest.approx(3.0) and len(clean.valid_losses) == 3

    work = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_lora(_lora(tiny_models), examples, examples[:3], cfg, tok.pad_token_id, "cpu", work, inputs,
                   callbacks=[_Crash()])
    assert (work / "checkpoint-2").is_dir() and not (work / "checkpoint-4").exists()
    again = _lora(tiny_models)
    resumed = train_lora(again, examples, examples[:3], cfg, tok.pad_token_id, "cpu", work, inputs)
    assert resumed.resumed_from == "checkpoint-2" and resumed.steps == 6
    final_clean, final_resumed = _adapter(whole), _adapter(again)
    assert any((final_clean[n] != _adapter(_lora(tiny_models))[n]).any() for n in final_clean)   # it trained
    for n in final_clean:
        torch.testing.assert_close(final_resumed[n], final_clean[n], rtol=1e-5, atol=1e-7)
    assert [v for _, v in resumed.valid_losses] == pytest.approx([v for _, v in clean.valid_losses], rel=1e-5)
    # other inputs never resume from these checkpoints
    other = train_lora(_lora(tiny_models), examples, examples[:3], cfg, tok.pad_token_id, "cpu", work,
                       {"what": "another run"}, callbacks=[])
    assert other.resumed_from is None


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_grounding_exact_title_ranks_its_items_first_and_ties_duplicates(kind, tiny_models):
    model, tok = load_causal_lm(tiny_models[kind])
    tpl = PromptTemplate()
    catalogue = Catalogue.build(model, tok, TITLES, tpl, batch_size=7, device="cpu")
    # generated texts that are exactly catalogue titles, embedded in another batch layout
    texts = [tpl.render_output(TITLES[2]), tpl.render_output(TITLES[20]), "Halo"]
    scores = catalogue.scores(embed_texts(model, tok, texts, batch_size=3, device="cpu"))
    assert scores.shape == (3, N_ITEMS + 1)
    for row, item in ((0, 2), (1, 20)):
        best = torch.nonzero(scores[row, 1:] >= scores[row, 1:].max() - 1e-4).flatten() + 1
        expected = [i for i in range(1, N_ITEMS + 1) if TITLES[i] == TITLES[item]]
        assert sorted(best.tolist()) == expected
    assert TITLES[2] == TITLES[48]
    assert torch.equal(scores[:, 2], scores[:, 48])  # editions sharing a title share their distance


def _assert_clean_failure(result, out, *needles):
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, line
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_folder_that_is_not_a_causal_lm(prepared, coreset, workdir):
    not_lm = workdir / "bert"
    not_lm.mkdir()
    out = workdir / "bad1"
    for config in ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, {"model_type": "vit"}):
        (not_lm / "config.json").write_text(json.dumps(config))
        _assert_clean_failure(_run(["--llm", not_lm, "--data", prepared, "--train", coreset, "--out", out]),
                              out, "not a causal language model", config["model_type"])
    _assert_clean_failure(_run(["--llm", prepared, "--data", prepared, "--train", coreset, "--out", out]),
                          out, "no config.json")


def test_missing_tokenizer(tiny_models, prepared, coreset, workdir):
    no_tok = workdir / "llama-no-tokenizer"
    no_tok.mkdir()
    for f in tiny_models["llama"].iterdir():
        if not f.name.startswith("tokenizer"):
            (no_tok / f.name).write_bytes(f.read_bytes())
    out = workdir / "bad2"
    _assert_clean_failure(_run(["--llm", no_tok, "--data", prepared, "--train", coreset, "--out", out]),
                          out, "no tokenizer")


def test_coreset_without_needed_columns(tiny_models, prepared, coreset, workdir):
    bad = workdir / "no-target.parquet"
    pq.write_table(pq.read_table(coreset).drop(["target"]), bad)
    out = workdir / "bad3"
    _assert_clean_failure(_run(["--llm", tiny_models["gpt2"], "--data", prepared, "--train", bad, "--out", out]),
                          out, "no-target.parquet", "missing column target")


def test_max_new_tokens_default_is_the_longest_title_capped():
    """--max-new-tokens left out: the longest title's response tokens + 1, never more than the one cap."""
    from finetune.bigrec import MAX_NEW_TOKENS_CAP, default_max_new_tokens
    from tiny_lm import train_title_tokenizer

    tokenizer = train_title_tokenizer("llama", TITLES[1:])
    template = PromptTemplate()
    longest = max(len(tokenizer(template.render_output(t), add_special_tokens=False)["input_ids"]) for t in TITLES[1:])
    assert longest + 1 < MAX_NEW_TOKENS_CAP
    assert default_max_new_tokens(tokenizer, TITLES, template) == longest + 1
    long_title = " ".join(WORDS * 8)
    assert default_max_new_tokens(tokenizer, TITLES + [long_title], template) == MAX_NEW_TOKENS_CAP
    help_text = next(p.help for p in main.commands["finetune"].get_command(None, "bigrec").params
                     if p.name == "max_new_tokens")
    assert f"at most {MAX_NEW_TOKENS_CAP}]" in help_text


def test_gradient_checkpointing_gives_the_same_step_and_fp16_needs_a_gpu(tiny_models, tmp_path):
    _, tok = load_causal_lm(tiny_models["llama"])
    examples = [encode_example(tok, TITLES[1 + i:4 + i], TITLES[30 - i], PromptTemplate(), 400, "all")
                for i in range(4)]
    after = []
    for checkpointing in (False, True):
        model = _lora(tiny_models)
        cfg = BigrecConfig(batch_size=4, micro_batch_size=2, max_grad_norm=0.0, max_steps=1, warmup_steps=0,
                           epochs=1, gradient_checkpointing=checkpointing)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        build_trainer(model, examples, examples[:2], cfg, tok.pad_token_id, "cpu", tmp_path / f"c{checkpointing}",
                      optimizer=opt).train()
        after.append(_adapter(model))
    assert any((after[0][n] != _adapter(_lora(tiny_models))[n]).any() for n in after[0])
    for n in after[0]:
        torch.testing.assert_close(after[1][n], after[0][n], rtol=1e-5, atol=1e-7)
    with pytest.raises(DealrecError, match="fp16 needs a CUDA GPU"):
        build_trainer(_lora(tiny_models), examples, examples, BigrecConfig(mixed_precision="fp16"),
                      tok.pad_token_id, "cpu", tmp_path / "fp16")
    with pytest.raises(DealrecError, match="not a multiple of --micro-batch-size"):
        build_trainer(_lora(tiny_models), examples, examples, BigrecConfig(batch_size=10, micro_batch_size=4),
                      tok.pad_token_id, "cpu", tmp_path / "ga")


def test_grounded_results_give_each_user_its_own_generation_whatever_order_the_evaluator_takes():
    """Row i of the generations is user i's; the evaluator takes users by history length, not in split order."""
    rng = np.random.default_rng(0)
    n, n_items, dim = 40, 12, 3
    history = [rng.integers(1, n_items + 1, k).astype(np.int32) for k in rng.permutation(n) % 9]
    targets = [rng.integers(1, n_items + 1, 1).astype(np.int32) for _ in range(n)]
    split = EvalSplit(user=np.arange(n), history=history, targets=targets)
    catalogue = Catalogue(torch.as_tensor(rng.normal(size=(n_items, dim))),
                          torch.as_tensor(np.r_[0, rng.permutation(n_items)]))
    generated = torch.as_tensor(rng.normal(size=(n, dim)))
    by_user = {id(h): generated[i] for i, h in enumerate(history)}   # what each user generated

    def direct(histories):
        return catalogue.scores(torch.stack([by_user[id(h)] for h in histories]))

    assert grounded_per_user(catalogue, generated, split, n_items, ks=(1, 5)).means() == \
        pytest.approx(evaluate_scorer(direct, split, n_items, ks=(1, 5)), abs=1e-12)
