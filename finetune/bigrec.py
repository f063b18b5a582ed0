"""BIGRec (Bao et al., "A Bi-Step Grounding Paradigm for Large Language Models in
Recommendation Systems"): LoRA fine-tuning of a local causal LM on a coreset, then
generation and grounding, evaluated with the project's one evaluator.

Step 1, fine-tune: each sample (history titles -> target title) becomes an alpaca prompt
(``finetune.prompts``); LoRA adapters on the attention projections are trained by transformers'
``Trainer`` (``finetune.lora_train``: AdamW, a batch of 128 by gradient accumulation, early
stopping on the validation loss, checkpoints beside OUT from which a killed run resumes).

Step 2, ground: for every evaluation user, beam search (4 beams) writes a title; the
generated text and every catalogue title are embedded by the BASE model (adapters off) as
the last layer's hidden state at the last token, with left padding; all items are ranked
by L2 distance. Items sharing a title share one embedding, hence one distance.

Output folder (written atomically)::

    OUT/adapter/adapter_model.safetensors, adapter_config.json   the LoRA adapter (peft)
    OUT/manifest.json                                            parameters, inputs, losses, timings
    OUT/metrics.json                                             valid/test metrics, steps, seconds
    OUT/per_user.parquet                                         split, user, each user's metrics
    OUT/generations/{valid,test}.parquet                         user, generated text
"""
from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from dealrec_core import __version__
from dealrec_core.batching import pad_batch
from dealrec_core.data import EvalSplit, PreparedData, atomic_output_dir, check_item_range, load_samples, \
    sha256_file, shard_paths, write_json_atomic, write_parquet_atomic
from dealrec_core.devices import DEVICE_HELP, DTYPE_CHOICES, dtype_name
from dealrec_core.errors import DealrecError
from dealrec_core.options import SEED
from dealrec_core.evaluate import (DEFAULT_KS, PER_USER_FILE, PerUser, evaluate_scorer_per_user, format_metrics,
                                   per_user_table, truth_rows)
from dealrec_core.paths import check_output
from finetune.llm import attach_lora, load_causal_lm, pick_device, pick_dtype, quantization
from finetune.lora_train import MIXED_PRECISION, check_batching, check_mixed_precision, train_lora
from finetune.prompts import DEFAULT_DOMAIN, DOMAIN_TEMPLATES, LOSS_ON, PromptTemplate, encode_example, encode_prompt

MAX_NEW_TOKENS_CAP = 64   # the most tokens that --max-new-tokens defaults to (default_max_new_tokens)


@dataclass
class BigrecConfig:
    """Fine-tuning and evaluation settings; the defaults are the paper's where it gives them."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None   # None: q_proj/v_proj or the model's fused qkv
    lr: float = 1e-4
    batch_size: int = 128                           # samples per optimizer step
    micro_batch_size: int = 4                       # samples per forward pass (accumulated)
    epochs: int = 50
    patience: int = 3                               # epochs without a better validation loss
    warmup_steps: int = 20                          # linear warmup, at most 10% of the planned steps
    max_grad_norm: float = 1.0
    max_tokens: int = 512                           # per example, the paper's budget
    loss_on: str = "all"                            # "all": the whole prompt (alpaca-lora's default)
    valid_loss_samples: int = 512                   # validation users for the early-stopping loss
    max_steps: int | None = None
    max_users: int | None = None                    # evaluation users per split (quick runs)
    num_beams: int = 4
    max_new_tokens: int | None = None               # None: the longest catalogue title, at most MAX_NEW_TOKENS_CAP
    eval_batch_size: int = 16                       # prompts per beam search call
    embed_batch_size: int = 64
    domain: str = DEFAULT_DOMAIN
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0                                # CPU threads for torch; 0: torch's default
    adapter: str | None = None
    load_in_8bit: bool = False                      # the LLM quantized by bitsandbytes (a CUDA GPU only)
    load_in_4bit: bool = False
    mixed_precision: str = "no"                     # the Trainer's autocast: no, bf16, fp16 (a CUDA GPU)
    gradient_checkpointing: bool = False            # recompute activations in the backward (less memory)


# ----------------------------------------------------------------------------- generation and grounding

def _adapters_off(model):
    """Context in which a peft model behaves as its base model."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@torch.no_grad()
def generate_titles(model, tokenizer, prompts: Sequence[Sequence[int]], num_beams: int,
                    max_new_tokens: int, batch_size: int, device, desc: str = "generate") -> list[str]:
    """Beam search from each prompt (left padded, in batches); the best beam's text."""
    model.eval()
    out: list[str] = [""] * len(prompts)
    # similar lengths together: less padding, same results (each row is independent)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start:start + batch_size]
        batch = pad_batch([prompts[i] for i in idx], tokenizer.pad_token_id, "left")
        width = batch["input_ids"].shape[1]
        seqs = model.generate(input_ids=batch["input_ids"].to(device),
                              attention_mask=batch["attention_mask"].to(device),
                              num_beams=num_beams, num_return_sequences=1, do_sample=False,
                              max_new_tokens=max_new_tokens, early_stopping=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row, i in enumerate(idx):
            text = tokenizer.decode(seqs[row, width:], skip_special_tokens=True)
            out[i] = text.split("\n", 1)[0].strip()
    return out


def _text_ids(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + ids
    return ids if ids else [tokenizer.eos_token_id]  # an empty text still needs one token


def backbone(model):
    """The transformer under the LM head (its output is the last layer's hidden states, final
    norm included); computing the vocabulary logits of every position would be wasted work."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix, base)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int, device,
                desc: str = "embed") -> torch.Tensor:
    """Last-layer hidden state at the last token of each text (left padding), float32 [N, d]."""
    model.eval()
    ids = [_text_ids(tokenizer, t) for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = None
    with _adapters_off(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in pad_batch([ids[i] for i in idx], tokenizer.pad_token_id,
                                                            "left").items()}
            hidden = backbone(model)(**batch).last_hidden_state[:, -1].float()
            if out is None:
                out = torch.empty(len(ids), hidden.shape[1], dtype=torch.float32)
            out[torch.tensor(idx)] = hidden.cpu()
    return out


@dataclass
class Catalogue:
    """Item titles for grounding: one embedding per distinct title, and each item's title row."""

    title_embeddings: torch.Tensor   # [T, d], one row per distinct title
    item_to_title: torch.Tensor      # long [n_items + 1]: item id -> row of title_embeddings

    @classmethod
    def build(cls, model, tokenizer, titles: Sequence[str], template: PromptTemplate,
              batch_size: int, device) -> "Catalogue":
        distinct = sorted(set(titles[1:]))
        row = {t: i for i, t in enumerate(distinct)}
        item_to_title = torch.tensor([row.get(t, 0) for t in titles], dtype=torch.long)
        emb = embed_texts(model, tokenizer, [template.render_output(t) for t in distinct], batch_size,
                          device, desc="embed catalogue")
        return cls(emb, item_to_title)

    def scores(self, generated_embeddings: torch.Tensor) -> torch.Tensor:
        """Negative L2 distance from each generated text to every item: [B, n_items + 1]."""
        dist = torch.cdist(generated_embeddings.double(), self.title_embeddings.double())
        return (-dist[:, self.item_to_title]).float()


def nonempty_users(split: EvalSplit, max_users: int | None, seed: int) -> EvalSplit:
    """Users with a ground truth (as the evaluator counts them), at most ``max_users`` at random."""
    keep = truth_rows(split)
    if max_users is not None and len(keep) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_users, replace=False))
    return split.subset(keep)


def grounded_per_user(catalogue: Catalogue, generated_embeddings: torch.Tensor, split: EvalSplit,
                      n_items: int, ks: Sequence[int] = DEFAULT_KS) -> PerUser:
    """The evaluator over grounded scores, user by user; ``split`` holds only users with a ground truth, and row i
    of ``generated_embeddings`` is user i's. The evaluator takes users in its own order (by history length), so
    each batch's rows are found by the identity of the history arrays it passes; every user is scored once."""
    row_of = {id(h): i for i, h in enumerate(split.history)}
    scored = np.zeros(len(split), dtype=bool)

    def score_fn(histories):
        rows = [row_of.get(id(h), -1) for h in histories]
        if any(r < 0 or scored[r] for r in rows):
            raise RuntimeError("the evaluator passed a history that is not one of the split's, or one twice")
        scored[rows] = True
        return catalogue.scores(generated_embeddings[rows])

    per_user = evaluate_scorer_per_user(score_fn, split, n_items, ks=ks)
    if not scored.all():
        raise RuntimeError(f"evaluator scored {int(scored.sum())} of {len(split)} users")
    return per_user


# ----------------------------------------------------------------------------- the run

def default_max_new_tokens(tokenizer, titles: Sequence[str], template: PromptTemplate) -> int:
    """``--max-new-tokens`` when not given: the longest catalogue title's response tokens + 1, at most
    ``MAX_NEW_TOKENS_CAP`` (``titles[0]`` is the padding item's)."""
    longest = max(len(tokenizer(template.render_output(tt), add_special_tokens=False)["input_ids"])
                  for tt in set(titles[1:]))
    return min(longest + 1, MAX_NEW_TOKENS_CAP)


def _titles_of(ids, titles: Sequence[str]) -> list[str]:
    return [titles[int(i)] for i in ids]


def _package_versions() -> dict[str, str]:
    import peft
    import transformers
    return {"dealrec": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _llm_fingerprint(llm: Path) -> dict:
    files = {}
    for p in sorted(llm.iterdir()):
        if p.suffix == ".json" or p.name.startswith("tokenizer"):
            files[p.name] = sha256_file(p)
    return files


def run_bigrec(llm: str | Path, data: str | Path, train: str | Path, out: str | Path,
               cfg: BigrecConfig, overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Fine-tune, generate, ground and evaluate; returns the metrics written to OUT/metrics.json.

    ``log`` receives a line at each milestone (the fine-tuning's end, each split's metrics); the
    command prints them on stderr. Progress bars go to stderr as everywhere."""
    # On a CPU shared with other jobs, torch's spinning worker threads can be many times slower
    # than one thread: --threads sets the count for this run only.
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bigrec(Path(llm), Path(data), Path(train), Path(out), cfg, overwrite, log or (lambda line: None))
    finally:
        torch.set_num_threads(threads_before)


def _run_bigrec(llm: Path, data: Path, train: Path, out: Path, cfg: BigrecConfig, overwrite: bool,
                log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    # OUT is replaced as a whole: never an input, inside one, or around one
    check_output(out, {"--llm": llm, "--data": data, "--train": train, "--adapter": cfg.adapter})
    if out.exists() and not overwrite:
        raise DealrecError(f"{out}: already exists (pass --overwrite to replace it)")
    if cfg.loss_on not in LOSS_ON:
        raise DealrecError(f"--loss-on must be one of {', '.join(LOSS_ON)}")
    if cfg.domain not in DOMAIN_TEMPLATES:
        raise DealrecError(f"unknown domain {cfg.domain!r} (choose from {', '.join(DOMAIN_TEMPLATES)})")
    check_batching(cfg.batch_size, cfg.micro_batch_size)
    template = DOMAIN_TEMPLATES[cfg.domain]

    # Every input is checked before anything is written or any model is trained.
    prepared = PreparedData(data)
    titles = prepared.titles()
    if prepared.n_items < max(DEFAULT_KS):
        raise DealrecError(f"{data}: {prepared.n_items} items; full-ranking metrics up to "
                           f"@{max(DEFAULT_KS)} need at least {max(DEFAULT_KS)}")
    samples = load_samples(train)
    if len(samples) == 0:
        raise DealrecError(f"{train}: no samples")
    check_item_range(samples, prepared.n_items, train)
    splits = {name: nonempty_users(prepared.eval_split(name), cfg.max_users, cfg.seed)
              for name in ("valid", "test")}
    device = pick_device(cfg.device)
    check_mixed_precision(cfg.mixed_precision, device)
    dtype = pick_dtype(cfg.dtype, device)
    quantize = quantization(cfg.load_in_8bit, cfg.load_in_4bit, device)
    model, tokenizer = load_causal_lm(llm, device, dtype, quantize)
    pad_id = tokenizer.pad_token_id
    timings["load"] = time.perf_counter() - t_start

    t = time.perf_counter()
    train_examples = [encode_example(tokenizer, _titles_of(h, titles), titles[int(y)], template,
                                     cfg.max_tokens, cfg.loss_on)
                      for h, y in tqdm(zip(samples.history, samples.target), total=len(samples),
                                       desc="encode", unit="sample", leave=False)]
    valid = splits["valid"]
    loss_users = valid if len(valid) <= cfg.valid_loss_samples else \
        valid.subset(np.sort(np.random.default_rng(cfg.seed + 1).choice(len(valid), cfg.valid_loss_samples,
                                                                        replace=False)))
    valid_examples = [encode_example(tokenizer, _titles_of(h, titles), titles[int(y[y > 0][0])], template,
                                     cfg.max_tokens, cfg.loss_on)
                      for h, y in zip(loss_users.history, loss_users.targets)]
    if not valid_examples:
        raise DealrecError(f"{data}: the validation split has no user with a ground truth "
                           f"(needed for early stopping)")
    timings["encode"] = time.perf_counter() - t

    # Catalogue embeddings come from the base model, before any adapter exists.
    t = time.perf_counter()
    catalogue = Catalogue.build(model, tokenizer, titles, template, cfg.embed_batch_size, device)
    timings["embed_catalogue"] = time.perf_counter() - t
    max_new_tokens = cfg.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(tokenizer, titles, template)

    torch.manual_seed(cfg.seed)
    model = attach_lora(model, cfg.r, cfg.alpha, cfg.dropout, cfg.target_modules, cfg.adapter)
    lora_config = model.peft_config["default"]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    inputs = {"llm": str(llm.resolve()), "llm_files": _llm_fingerprint(llm),
              "data": str(data.resolve()), "data_manifest": prepared.manifest(),
              "train": {str(p): sha256_file(p) for p in shard_paths(train)},
              "adapter": cfg.adapter}
    # checkpoints beside OUT: a killed run started again with the same inputs and options resumes
    work_dir = out.parent / f".{out.name}.checkpoints"
    t = time.perf_counter()
    result = train_lora(model, train_examples, valid_examples, cfg, pad_id, device, work_dir,
                        inputs={"inputs": inputs, "config": asdict(cfg)})
    timings["train"] = time.perf_counter() - t
    if result.resumed_from:
        log(f"resumed from {work_dir / result.resumed_from}")
    log(f"fine-tuned {result.steps} steps ({result.epochs:.2f} epochs, {result.stopped}); "
        f"best validation loss {result.best_valid_loss:.4f}")

    metrics: dict = {}
    per_user: dict[str, PerUser] = {}
    generations: dict[str, list[str]] = {}
    for name, split in splits.items():
        t = time.perf_counter()
        prompts = [encode_prompt(tokenizer, _titles_of(h, titles), template, cfg.max_tokens - max_new_tokens)
                   for h in split.history]
        generations[name] = generate_titles(model, tokenizer, prompts, cfg.num_beams, max_new_tokens,
                                            cfg.eval_batch_size, device, desc=f"generate {name}")
        timings[f"generate_{name}"] = time.perf_counter() - t
        t = time.perf_counter()
        gen_emb = embed_texts(model, tokenizer, generations[name], cfg.embed_batch_size, device,
                              desc=f"embed {name}")
        per_user[name] = grounded_per_user(catalogue, gen_emb, split, prepared.n_items)
        metrics[name] = per_user[name].means()
        timings[f"ground_{name}"] = time.perf_counter() - t
        log(f"{name} ({len(split)} users): {format_metrics(metrics[name])}")

    metrics.update({"epochs": round(result.epochs, 4), "steps": result.steps,
                    "seconds": round(time.perf_counter() - t_start, 2),
                    "train_samples": len(samples), "eval_users": {k: len(v) for k, v in splits.items()}})
    manifest = {
        "method": "bigrec",
        "config": {**asdict(cfg), "max_new_tokens": max_new_tokens},
        "lora": {"r": lora_config.r, "alpha": lora_config.lora_alpha, "dropout": lora_config.lora_dropout,
                 "target_modules": sorted(lora_config.target_modules), "trainable_parameters": n_trainable},
        "template": asdict(template),
        "inputs": inputs,
        "training": {"steps": result.steps, "epochs": result.epochs, "stopped": result.stopped,
                     "best_valid_loss": result.best_valid_loss, "best_epoch": result.best_epoch,
                     "valid_losses": result.valid_losses, "train_losses": result.train_losses,
                     "valid_loss_users": len(valid_examples), "loop": "transformers.Trainer",
                     "resumed_from": result.resumed_from},
        "device": str(device), "dtype": dtype_name(dtype), "quantization": quantize,
        "torch_threads": torch.get_num_threads(),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "versions": _package_versions(),
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        (tmp / "generations").mkdir()
        for name, split in splits.items():
            pq.write_table(pa.table({"user": pa.array(split.user, pa.int64()),
                                     "generated": pa.array(generations[name], pa.string())}),
                           tmp / "generations" / f"{name}.parquet")
        write_parquet_atomic(per_user_table(per_user), tmp / PER_USER_FILE)
        write_json_atomic(tmp / "manifest.json", manifest)
        write_json_atomic(tmp / "metrics.json", metrics)
    shutil.rmtree(work_dir, ignore_errors=True)   # the results are in place: the checkpoints are spent
    return metrics


# ----------------------------------------------------------------------------- the command

def bigrec_config(adapter=None, target_modules=None, **options) -> BigrecConfig:
    """The ``BigrecConfig`` of the command's options (``--target-modules`` as one comma-separated string):
    the command and ``dealrec compare`` build the configuration the same way. An option left out keeps
    ``BigrecConfig``'s default, the one place the defaults are written."""
    return BigrecConfig(
        target_modules=tuple(m.strip() for m in target_modules.split(",") if m.strip()) if target_modules else None,
        adapter=str(adapter) if adapter else None, **options)


@click.command("bigrec")
@click.option("--llm", required=True, type=click.Path(path_type=Path),
              help="Local HuggingFace causal-LM folder (config.json, weights, tokenizer).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Prepared data folder (items and evaluation splits).")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path),
              help="Coreset or samples table (Parquet file or folder with history and target).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--adapter", type=click.Path(path_type=Path), default=BigrecConfig.adapter,
              help="Existing LoRA adapter folder to continue training from.")
@click.option("--r", "r", default=BigrecConfig.r, show_default=True, help="LoRA rank.")
@click.option("--alpha", default=BigrecConfig.alpha, show_default=True, help="LoRA alpha.")
@click.option("--dropout", default=BigrecConfig.dropout, show_default=True, help="LoRA dropout.")
@click.option("--target-modules", default=BigrecConfig.target_modules,
              help="Comma-separated modules to adapt [default: q_proj,v_proj, or the fused qkv projection].")
@click.option("--lr", default=BigrecConfig.lr, show_default=True, help="Learning rate (AdamW).")
@click.option("--batch-size", default=BigrecConfig.batch_size, show_default=True,
              help="Samples per optimizer step.")
@click.option("--micro-batch-size", default=BigrecConfig.micro_batch_size, show_default=True,
              help="Samples per forward pass; gradients accumulate up to --batch-size.")
@click.option("--epochs", default=BigrecConfig.epochs, show_default=True,
              help="Most epochs (early stopping may end sooner).")
@click.option("--patience", default=BigrecConfig.patience, show_default=True,
              help="Stop after this many epochs without a better validation loss.")
@click.option("--loss-on", type=click.Choice(LOSS_ON), default=BigrecConfig.loss_on, show_default=True,
              help="Train on the whole prompt or on the response only.")
@click.option("--max-tokens", default=BigrecConfig.max_tokens, show_default=True,
              help="Token budget per example; the oldest history titles are dropped whole.")
@click.option("--max-steps", type=int, default=BigrecConfig.max_steps, help="Stop after this many optimizer steps.")
@click.option("--max-users", type=int, default=BigrecConfig.max_users,
              help="Evaluate at most this many users per split.")
@click.option("--valid-loss-samples", default=BigrecConfig.valid_loss_samples, show_default=True,
              help="Validation users whose loss drives early stopping.")
@click.option("--num-beams", default=BigrecConfig.num_beams, show_default=True)
@click.option("--max-new-tokens", type=int, default=BigrecConfig.max_new_tokens,
              help=f"Generated tokens per user [default: the longest title's length, at most {MAX_NEW_TOKENS_CAP}].")
@click.option("--eval-batch-size", default=BigrecConfig.eval_batch_size, show_default=True,
              help="Prompts per beam search call.")
@click.option("--domain", type=click.Choice(sorted(DOMAIN_TEMPLATES)), default=BigrecConfig.domain,
              show_default=True, help="Prompt wording.")
@click.option("--device", default=BigrecConfig.device, show_default=True, help=f"{DEVICE_HELP}.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default=BigrecConfig.dtype,
              show_default=True, help="The LLM's weights; auto: bf16 on a GPU that has it, else fp32.")
@click.option("--load-in-8bit", is_flag=True, default=BigrecConfig.load_in_8bit,
              help="Load the LLM in 8 bits (bitsandbytes; a CUDA GPU only).")
@click.option("--load-in-4bit", is_flag=True, default=BigrecConfig.load_in_4bit,
              help="Load the LLM in 4 bits, nf4 (bitsandbytes; a CUDA GPU only).")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), default=BigrecConfig.mixed_precision,
              show_default=True, help="Autocast during fine-tuning (transformers' Trainer); fp16 needs a CUDA GPU.")
@click.option("--gradient-checkpointing", is_flag=True, default=BigrecConfig.gradient_checkpointing,
              help="Recompute activations in the backward pass: less memory, slower steps.")
@click.option("--threads", default=BigrecConfig.threads, show_default=True,
              help="CPU threads for torch (0: torch's default). 1 is often fastest on a busy machine.")
@click.option("--seed", type=SEED, default=BigrecConfig.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def bigrec_command(llm, data, train_path, out, overwrite, **options):
    """BIGRec: LoRA fine-tune a local causal LM on TRAIN, ground its generations, evaluate."""
    metrics = run_bigrec(llm, data, train_path, out, bigrec_config(**options), overwrite=overwrite,
                         log=lambda line: click.echo(line, err=True))
    click.echo(json.dumps({k: metrics[k] for k in ("valid", "test", "steps", "epochs", "seconds")}))
