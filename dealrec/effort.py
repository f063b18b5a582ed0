"""Effort scores: the norm of the target model's per-sample gradient over one Linear block.

For a Linear block with inputs ``a_t`` and output gradients ``g_t`` at positions ``t`` of a
sample, the sample's gradient is ``G_s = sum_t g_t a_t^T`` and the effort is ``||G_s||_F``.
One forward and one backward pass of ``sum_s L(s)`` over a batch give every ``(a_t, g_t)``
(hooks, as for influence); each sample's norm is then either

- *direct*: build ``G_s`` (``d_out x d_in``) and take its norm. For a LoRA B of rank ``r`` the
  input is ``u_t = A x_t`` and ``G_s`` is ``d_out x r``: tiny, so this is the default there;
- *ghost*: ``||G_s||^2 = sum_{t,t'} (g_t . g_t') (a_t . a_t')``, which never builds ``G_s`` and
  is cheaper for wide blocks and short sequences (``T^2 (d_in + d_out)`` vs ``T d_in d_out``).

The cheaper of the two is chosen per batch; both are exact (tests compare them to a per-sample
autograd loop). Scoring runs the target in eval mode: no dropout (LoRA dropout included), so
the effort is a deterministic function of the weights and the sample.

Targets:

- ``tiger`` (default, CPU): a TIGER model at the start of fine-tuning (fresh for the data's
  semantic IDs, or ``--target-init CKPT``); the block defaults to the last decoder layer's
  self-attention value projection (the analogue of the paper's ``v_proj``), any Linear by name;
- ``bigrec``: a local causal LM with fresh (or ``--adapter``) LoRA in the paper's settings on the
  targets ``finetune bigrec`` trains (``finetune.llm.default_lora_targets``, per architecture); the
  block defaults to the last layer's ``v_proj`` LoRA B (the paper's choice), or that of the fused
  q/k/v projection for models that fuse them (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``, ...). The
  prompts are ``--template``'s wording; the model loads on ``--device`` in ``--dtype`` (or 8-/4-bit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from dealrec_core.batching import pad_batch
from dealrec_core.devices import dtype_name, pick_device, pick_dtype, to_device
from dealrec_core.errors import DealrecError
from dealrec.influence import LinearTaps, length_groups
from finetune.bigrec import BigrecConfig
from finetune.llm import attach_lora, load_causal_lm, quantization, value_target
from finetune.prompts import DEFAULT_DOMAIN, DOMAIN_TEMPLATES, LOSS_ON, encode_example
from finetune.tiger import load_tiger


def norms_from_rows(a: torch.Tensor, g: torch.Tensor, method: str = "auto") -> np.ndarray:
    """Per-sample ``||sum_t g_t a_t^T||`` from ``a`` [B, T, d_in] and ``g`` [B, T, d_out], float64."""
    a64, g64 = a.double(), g.double()
    b, t, d_in = a64.shape
    d_out = g64.shape[-1]
    if method == "auto":
        method = "ghost" if t * (d_in + d_out) < d_in * d_out else "direct"
    if method == "direct":
        grads = torch.einsum("bto,bti->boi", g64, a64)
        return grads.reshape(b, -1).norm(dim=1).cpu().numpy()
    if method == "ghost":
        gram_a = a64 @ a64.transpose(1, 2)   # [B, T, T]
        gram_g = g64 @ g64.transpose(1, 2)
        sq = (gram_a * gram_g).sum(dim=(1, 2)).clamp(min=0)
        return sq.sqrt().cpu().numpy()
    raise ValueError(f"unknown norm method {method!r}")


def batch_grad_norms(sample_losses: Callable[[dict], torch.Tensor], block: nn.Linear, taps: LinearTaps,
                     batch: dict, method: str = "auto") -> np.ndarray:
    """One forward and one backward pass: every sample's gradient norm over ``block.weight``."""
    with taps.recording():
        losses = sample_losses(batch)
        if not torch.isfinite(losses).all():
            raise DealrecError("the target model returned a non-finite sample loss")
        torch.autograd.grad(losses.sum(), block.weight)
    if len(taps.inputs) != 1 or len(taps.grads) != 1 or taps.grads[0] is None:
        raise DealrecError(f"the effort block ran {len(taps.inputs)} times in one forward pass (expected once)")
    n = losses.shape[0]
    a, g = taps.inputs[0], taps.grads[0]
    if a.shape[0] != n:
        raise DealrecError(f"the effort block's input has leading dimension {a.shape[0]}, not the batch size {n}")
    return norms_from_rows(a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1]), method)


def per_sample_norm_loop(sample_losses: Callable[[dict], torch.Tensor], block: nn.Linear,
                         batches: list[dict]) -> np.ndarray:
    """The reference: one autograd call per single-sample batch."""
    out = []
    for batch in batches:
        (grad,) = torch.autograd.grad(sample_losses(batch).sum(), block.weight)
        out.append(float(grad.double().norm()))
    return np.asarray(out, dtype=np.float64)


def find_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """The Linear module called ``name`` (a full name, or a unique suffix of one)."""
    modules = dict(model.named_modules())
    if name in modules:
        found = [name]
    else:
        found = [n for n in modules if n.endswith("." + name) or n.endswith(name)]
    if len(found) != 1:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        hint = ", ".join(linear[-6:])
        what = "no module" if not found else f"{len(found)} modules ({', '.join(found[:4])})"
        raise DealrecError(f"--effort-block {name!r}: {what} match; Linear modules include: {hint}")
    module = modules[found[0]]
    if not isinstance(module, nn.Linear):
        raise DealrecError(f"--effort-block {found[0]!r} is a {type(module).__name__}, not a Linear layer")
    return found[0], module


def freeze_all_but_weight(model: nn.Module, block: nn.Linear) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    block.weight.requires_grad_(True)


# ----------------------------------------------------------------------------- targets

@dataclass
class EffortTarget:
    """What the engine needs from a target model: batches, per-sample losses and the block."""

    name: str
    block_name: str
    block: nn.Linear
    collate: Callable          # Samples -> batch dict
    sample_losses: Callable    # batch dict -> Tensor[B]
    info: dict
    lengths: Callable | None = None   # Samples -> token count of each; enables length-sorted sub-batches

    def __post_init__(self):
        self.taps = LinearTaps(self.block)

    def norms(self, samples) -> np.ndarray:
        if self.lengths is None or len(samples) < 2:
            return batch_grad_norms(self.sample_losses, self.block, self.taps, self.collate(samples))
        # Prompts differ a lot in length: pad each sub-batch only to its own longest prompt.
        # The sub-batches are a deterministic function of the batch, and a sample's norm does
        # not depend on its batch-mates, so the result is the same as one big batch.
        out = np.zeros(len(samples), dtype=np.float64)
        for idx in length_groups(self.lengths(samples)):
            out[idx] = batch_grad_norms(self.sample_losses, self.block, self.taps, self.collate(samples.subset(idx)))
        return out


def _last_matching(model: nn.Module, suffix: str, within: str = "") -> str:
    """The deepest Linear whose name ends in ``suffix`` (and contains ``within``): the last layer's."""
    names = [n for n, m in model.named_modules()
             if n.endswith(suffix) and within in n and isinstance(m, nn.Linear)]
    if not names:
        raise DealrecError(f"the target model has no Linear module ending in {suffix!r} (pass --effort-block)")

    def layer_index(n: str) -> int:
        digits = [int(p) for p in n.split(".") if p.isdigit()]
        return digits[0] if digits else -1  # the first number is the layer (".layers.N." / ".block.N.")
    return max(names, key=layer_index)


def causal_lm_sample_losses(model: nn.Module) -> Callable[[dict], torch.Tensor]:
    """Each example's mean token loss over its labelled tokens (padding and prompt excluded)."""
    def losses(batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        mask = shift_labels != -100
        ce = nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]).float(),
                                         shift_labels.clamp(min=0).reshape(-1), reduction="none")
        ce = ce.reshape(shift_labels.shape) * mask
        return ce.sum(1) / mask.sum(1).clamp(min=1)
    return losses


def bigrec_target(llm_dir: str, titles: list[str], adapter: str | None = None, block: str | None = None,
                  max_tokens: int = 512, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                  target_modules=None, device: str = "cpu", loss_on: str | None = None,
                  template: str = DEFAULT_DOMAIN, dtype: str = "fp32", load_in_8bit: bool = False,
                  load_in_4bit: bool = False) -> EffortTarget:
    """A local causal LM with LoRA (the paper's settings), scored on BIGRec's alpaca prompts.

    Effort is the gradient norm of the loss the fine-tuning optimises, so the tokens it covers are
    ``finetune bigrec``'s (``loss_on``: its ``BigrecConfig.loss_on`` default, the whole prompt and
    response, as the reference trains; ``"response"`` for a trainer that masks the prompt), its LoRA
    targets are the ones ``finetune bigrec`` picks for the architecture (``target_modules=None``) and
    its prompts are in ``template``'s wording (``finetune.prompts.DOMAIN_TEMPLATES``)."""
    loss_on = BigrecConfig.loss_on if loss_on is None else loss_on
    if loss_on not in LOSS_ON:
        raise DealrecError(f"unknown loss_on {loss_on!r} (choose from {', '.join(LOSS_ON)})")
    if template not in DOMAIN_TEMPLATES:
        raise DealrecError(f"unknown prompt template {template!r} (choose from {', '.join(DOMAIN_TEMPLATES)})")

    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    quantize = quantization(load_in_8bit, load_in_4bit, torch_device)
    model, tokenizer = load_causal_lm(llm_dir, device=torch_device, dtype=torch_dtype, quantize=quantize)
    torch.manual_seed(0)  # fresh LoRA A is random: fix it so effort reproduces
    model = attach_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, adapter=adapter)
    model.eval()  # no dropout at scoring time: effort is a deterministic function of the sample
    targets = sorted(model.peft_config["default"].target_modules)
    block_name = block or _last_matching(model, f"{value_target(targets)}.lora_B.default")
    block_name, linear = find_linear(model, block_name)
    freeze_all_but_weight(model, linear)
    wording = DOMAIN_TEMPLATES[template]
    pad = tokenizer.pad_token_id

    def encode(samples) -> list[dict]:
        return [encode_example(tokenizer, [titles[i] for i in h], titles[t], wording, max_tokens, loss_on)
                for h, t in zip(samples.history, samples.target)]

    def lengths(samples) -> list[int]:
        return [len(r["input_ids"]) for r in encode(samples)]

    def collate(samples) -> dict:
        rows = encode(samples)
        # right padding: causal attention never lets a real token see it
        batch = pad_batch([r["input_ids"] for r in rows], pad, "right", [r["labels"] for r in rows],
                          position_ids=False)
        return to_device(batch, torch_device)

    info = {"target": "bigrec", "llm": str(llm_dir), "adapter": str(adapter) if adapter else None,
            "lora": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets},
            "block": block_name, "block_shape": list(linear.weight.shape), "max_tokens": max_tokens,
            "prompt": f"alpaca (finetune.prompts.DOMAIN_TEMPLATES[{template!r}])", "loss_on": loss_on,
            "template": template, "device": str(torch_device), "dtype": dtype_name(torch_dtype),
            "quantization": quantize}
    return EffortTarget("bigrec", block_name, linear, collate, causal_lm_sample_losses(model), info, lengths)


TIGER_DEFAULT_BLOCK = "layer.0.SelfAttention.v"  # in the last decoder block


def tiger_target(tiger_dir: str, block: str | None = None, device: str = "cpu") -> EffortTarget:
    """A TIGER model (``finetune.tiger.load_tiger``) on ``device``: effort on its next-semantic-ID loss."""
    model = load_tiger(tiger_dir, device=pick_device(device))
    model.eval()  # no dropout: a deterministic function of the weights and the sample
    block_name = block or _last_matching(model, TIGER_DEFAULT_BLOCK, within="decoder.")
    block_name, linear = find_linear(model, block_name)
    freeze_all_but_weight(model, linear)

    def collate(samples) -> dict:
        return model.encode(list(samples.history), list(samples.target))

    keep = model.config.max_history_items

    def lengths(samples) -> list[int]:  # encoder tokens: 4 per kept history item (3 codes + collision) + eos
        return [min(len(h), keep) * model.n_levels + 1 for h in samples.history]

    info = {"target": "tiger", "tiger": str(tiger_dir), "block": block_name,
            "block_shape": list(linear.weight.shape), "device": str(model.device)}
    return EffortTarget("tiger", block_name, linear, collate, model.sample_losses, info, lengths)
