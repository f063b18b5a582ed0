"""Tiny causal LMs built locally for tests: a BPE tokenizer trained on item titles plus a
randomly initialised model from a config. Nothing is downloaded.

Each kind mimics the special-token habits of its family, so that code which loads "any
local causal LM folder" meets the real variety:

- ``llama``: ``<s>`` bos, ``</s>`` eos, ``<unk>``, and no pad token (as Llama checkpoints);
- ``qwen2``: no bos, ``<|endoftext|>`` as both eos and pad (as Qwen2 checkpoints);
- ``gpt2``: ``<|endoftext|>`` as bos, eos and unk, no pad (as GPT-2 checkpoints);
- ``phi3``: ``<s>`` bos, ``<|endoftext|>`` eos, ``<unk>``, no pad, and the fused ``qkv_proj`` attention
  projection (as Phi-3 checkpoints).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig, Phi3Config, PreTrainedTokenizerFast,
                          Qwen2Config)

KINDS = ("llama", "qwen2", "gpt2", "phi3")

# Words of the prompt template, so the tiny vocabulary has merges for them too.
_TEMPLATE_TEXT = [
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response:",
    "Given the games a user has played, in order, recommend the next game the user will like.",
    "The user has played the following games before:",
]

_SPECIALS = {
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "qwen2": dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"),
    "phi3": dict(bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>"),
}


def train_title_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (any text still encodes: byte fallback)."""
    specials = _SPECIALS[kind]
    special_tokens = list(dict.fromkeys(specials.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def _config(kind: str, tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int):
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=1024, tie_word_embeddings=True, **ids)
    if kind == "qwen2":
        return Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=1024, tie_word_embeddings=True, **ids)
    if kind == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, **ids)
    if kind == "phi3":
        return Phi3Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=1024, tie_word_embeddings=True, **ids)
    raise ValueError(f"unknown kind {kind!r} (choose from {', '.join(KINDS)})")


def make_tiny_causal_lm(kind: str, titles: list[str], out_dir: str | Path, *, hidden: int = 32,
                        layers: int = 2, heads: int = 2, vocab_size: int = 600, seed: int = 0) -> Path:
    """Save a random tiny ``kind`` model and its title-trained tokenizer into ``out_dir``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (choose from {', '.join(KINDS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_title_tokenizer(kind, list(titles) + _TEMPLATE_TEXT, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(kind, tokenizer, hidden, layers, heads))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
