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

Targets (each an ``EffortTarget``, registered by name in ``EFFORT_TARGETS`` where it is defined;
``dealrec score --target NAME`` looks it up there):

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

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from dealrec_core.batching import pad_batch
from dealrec_core.data import PreparedData, atomic_output_dir, sha256_file, stable_hash, write_json_atomic
from dealrec_core.devices import dtype_name, pick_device, pick_dtype, to_device
from dealrec_core.errors import DealrecError
from dealrec_core.tasks import Registry, ScoringTask
from dealrec.influence import LinearTaps, length_groups
from finetune.bigrec import BigrecConfig
from finetune.llm import attach_lora, load_causal_lm, quantization, value_target
from finetune.prompts import DEFAULT_DOMAIN, DOMAIN_TEMPLATES, LOSS_ON, encode_example
from finetune.tiger import TigerModel, build_tiger, load_tiger, save_tiger


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

# Every effort target registers here where it is defined (``class TigerTarget(EffortTarget, name="tiger")``);
# ``dealrec score --target NAME`` finds it by name.
EFFORT_TARGETS = Registry("effort target")


@dataclass
class TargetPlan:
    """What the driver prepared for a target before the effort shards run (``EffortTarget.plan``)."""

    task: dict            # fields every effort task gets (read back by ``from_task`` in the worker)
    inputs: dict          # what the effort shards' keys hash besides the common inputs (content digests)
    info: dict            # the manifest's ``target`` record so far
    phases: dict = field(default_factory=dict)   # timed driver-side phases (TIGER's ``semantic_ids``)


class EffortTarget(ScoringTask):
    """A target model for effort, on the scoring-task contract (``dealrec_core.tasks``): ``collate``,
    ``sample_losses``, ``named_block`` (the block whose gradient norm is the effort); ``lengths`` (token
    count of each sample, for length-sorted sub-batches); ``info`` (what it was, for the manifest).

    The engine side: ``options`` (the fields of ``dealrec score``'s config it reads), ``required``
    (those it cannot do without, each with its one-line error), ``plan`` (driver: build or hash what the
    workers will load) and ``from_task`` (worker: the target from a task dict)."""

    registry = EFFORT_TARGETS
    required: ClassVar[dict[str, str]] = {}

    def __init__(self, block_name: str, block: nn.Linear, info: dict):
        self.block_name, self.block, self.info = block_name, block, info
        self.taps = LinearTaps(block)

    def named_block(self) -> tuple[str, nn.Linear]:
        return self.block_name, self.block

    def lengths(self, samples) -> list[int] | None:
        return None

    def norms(self, samples) -> np.ndarray:
        lengths = self.lengths(samples) if len(samples) >= 2 else None
        if lengths is None:
            return batch_grad_norms(self.sample_losses, self.block, self.taps, self.collate(samples))
        # Prompts differ a lot in length: pad each sub-batch only to its own longest prompt.
        # The sub-batches are a deterministic function of the batch, and a sample's norm does
        # not depend on its batch-mates, so the result is the same as one big batch.
        out = np.zeros(len(samples), dtype=np.float64)
        for idx in length_groups(lengths):
            out[idx] = batch_grad_norms(self.sample_losses, self.block, self.taps, self.collate(samples.subset(idx)))
        return out

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse, before any work, a config without an option this target cannot do without."""
        for name, message in cls.required.items():
            if not getattr(config, name):
                raise DealrecError(message)

    @classmethod
    def plan(cls, prepared: PreparedData, work: Path, config, progress: bool = True) -> TargetPlan:
        raise NotImplementedError

    @classmethod
    def from_task(cls, task: dict) -> "EffortTarget":
        raise NotImplementedError


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


def tensors_digest(path: Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes in name order). The file's
    own bytes are no content hash: which name of a tied tensor it keeps can change from run to run."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


def folder_digest(path, what: str) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise DealrecError(f"{path}: no such folder (--{what})")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".model",
                                                                              ".txt", ".bin"))
    return {f"{what}_sha256": stable_hash({p.name: sha256_file(p) for p in files})}


TIGER_DEFAULT_BLOCK = "layer.0.SelfAttention.v"  # in the last decoder block


class TigerTarget(EffortTarget, name="tiger"):
    """A TIGER model (``finetune.tiger``): effort on its next-semantic-ID loss."""

    options = ("target_init", "effort_block")

    def __init__(self, model: TigerModel, block: str | None = None, source: str | None = None):
        model.eval()  # no dropout: a deterministic function of the weights and the sample
        block_name = block or _last_matching(model, TIGER_DEFAULT_BLOCK, within="decoder.")
        block_name, linear = find_linear(model, block_name)
        freeze_all_but_weight(model, linear)
        self.model = model
        self.sample_losses = model.sample_losses
        info = {"target": "tiger", "tiger": str(source), "block": block_name, "block_shape": list(linear.weight.shape),
                "device": str(model.device)}
        super().__init__(block_name, linear, info)

    def collate(self, samples) -> dict:
        return self.model.encode(list(samples.history), list(samples.target))

    def lengths(self, samples) -> list[int]:   # encoder tokens: 4 per kept history item (3 codes + collision) + eos
        keep = self.model.config.max_history_items
        return [min(len(h), keep) * self.model.n_levels + 1 for h in samples.history]

    @classmethod
    def plan(cls, prepared: PreparedData, work: Path, config, progress: bool = True) -> TargetPlan:
        tiger_dir, info = prepare_tiger_target(prepared, work / "tiger-init", config, progress)
        phases = {"semantic_ids": {"seconds": info.pop("seconds")}}
        return TargetPlan({"tiger_dir": str(tiger_dir)}, {"tiger": info.get("built_sha256", info["sha256"])},
                          info, phases)

    @classmethod
    def from_task(cls, task: dict) -> "TigerTarget":
        # the device the driver resolved (an actor asks Ray for a GPU exactly when it is a CUDA one)
        return tiger_target(task["tiger_dir"], block=task.get("effort_block"), device=task.get("device", "cpu"))


class BigrecTarget(EffortTarget, name="bigrec"):
    """A local causal LM with LoRA (the paper's settings), scored on BIGRec's alpaca prompts.

    Effort is the gradient norm of the loss the fine-tuning optimises, so the tokens it covers are
    ``finetune bigrec``'s (``loss_on``: its ``BigrecConfig.loss_on`` default, the whole prompt and
    response, as the reference trains; ``"response"`` for a trainer that masks the prompt)."""

    options = ("llm", "adapter", "effort_block")
    required = {"llm": "--target bigrec needs --llm DIR (a local HuggingFace causal LM folder)"}

    def __init__(self, llm_dir: str, titles: list[str], adapter: str | None = None, block: str | None = None,
                 max_tokens: int = 512, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                 target_modules=None, device: str = "cpu", loss_on: str | None = None,
                 template: str = DEFAULT_DOMAIN, dtype: str = "fp32", load_in_8bit: bool = False,
                 load_in_4bit: bool = False):
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
        # the LoRA targets finetune bigrec picks for the architecture (target_modules=None)
        model = attach_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, adapter=adapter)
        model.eval()  # no dropout at scoring time: effort is a deterministic function of the sample
        targets = sorted(model.peft_config["default"].target_modules)
        block_name = block or _last_matching(model, f"{value_target(targets)}.lora_B.default")
        block_name, linear = find_linear(model, block_name)
        freeze_all_but_weight(model, linear)
        self.titles, self.tokenizer, self.max_tokens, self.loss_on = titles, tokenizer, max_tokens, loss_on
        self.template, self.device = DOMAIN_TEMPLATES[template], torch_device
        self.sample_losses = causal_lm_sample_losses(model)
        info = {"target": "bigrec", "llm": str(llm_dir), "adapter": str(adapter) if adapter else None,
                "lora": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets},
                "block": block_name, "block_shape": list(linear.weight.shape), "max_tokens": max_tokens,
                "prompt": f"alpaca (finetune.prompts.DOMAIN_TEMPLATES[{template!r}])", "loss_on": loss_on,
                "template": template, "device": str(torch_device), "dtype": dtype_name(torch_dtype),
                "quantization": quantize}
        super().__init__(block_name, linear, info)

    def _encode(self, samples) -> list[dict]:
        titles = self.titles
        return [encode_example(self.tokenizer, [titles[i] for i in h], titles[t], self.template, self.max_tokens,
                               self.loss_on) for h, t in zip(samples.history, samples.target)]

    def lengths(self, samples) -> list[int]:
        return [len(r["input_ids"]) for r in self._encode(samples)]

    def collate(self, samples) -> dict:
        rows = self._encode(samples)
        # right padding: causal attention never lets a real token see it
        batch = pad_batch([r["input_ids"] for r in rows], self.tokenizer.pad_token_id, "right",
                          [r["labels"] for r in rows], position_ids=False)
        return to_device(batch, self.device)

    @classmethod
    def plan(cls, prepared: PreparedData, work: Path, config, progress: bool = True) -> TargetPlan:
        inputs = folder_digest(config.llm, "llm")
        if config.adapter:
            inputs.update(folder_digest(config.adapter, "adapter"))
        # what changes the effort beyond the defaults of the runs made before these options
        inputs.update({k: getattr(config, k) for k in ("template", "dtype", "load_in_8bit", "load_in_4bit")
                       if getattr(config, k) != getattr(type(config), k)})
        return TargetPlan({"llm": str(config.llm), "adapter": config.adapter, "template": config.template,
                           "dtype": config.dtype, "load_in_8bit": config.load_in_8bit,
                           "load_in_4bit": config.load_in_4bit}, inputs, {})

    @classmethod
    def from_task(cls, task: dict) -> "BigrecTarget":
        titles = PreparedData(task["data"]).titles()
        # the device the driver resolved (an actor asks Ray for a GPU exactly when it is a CUDA one)
        return cls(task["llm"], titles, adapter=task.get("adapter"), block=task.get("effort_block"),
                   device=task.get("device", "cpu"), template=task.get("template", DEFAULT_DOMAIN),
                   dtype=task.get("dtype", "auto"), load_in_8bit=task.get("load_in_8bit", False),
                   load_in_4bit=task.get("load_in_4bit", False))


def bigrec_target(llm_dir: str, titles: list[str], **options) -> BigrecTarget:
    """``BigrecTarget`` (its constructor's options)."""
    return BigrecTarget(llm_dir, titles, **options)


def tiger_target(tiger_dir: str, block: str | None = None, device: str = "cpu") -> TigerTarget:
    """The TIGER saved in ``tiger_dir`` (``finetune.tiger.load_tiger``) on ``device``, as an effort target."""
    return TigerTarget(load_tiger(tiger_dir, device=pick_device(device)), block, source=tiger_dir)


def prepare_tiger_target(prepared: PreparedData, folder: Path, config, progress: bool = True) -> tuple[Path, dict]:
    """The TIGER model at the start of fine-tuning: ``--target-init CKPT`` or a fresh one built once here
    (``config``: ``dealrec score``'s, for ``target_init`` and ``seed``)."""
    t0 = time.perf_counter()
    if config.target_init:
        ckpt = Path(config.target_init)
        load_tiger(ckpt)  # fail here, with the loader's message, rather than in every worker
        info = {"tiger": str(ckpt), "fresh": False, **folder_digest(ckpt, "target-init")}
        info["sha256"] = info.pop("target-init_sha256")
        info["seconds"] = round(time.perf_counter() - t0, 3)
        return ckpt, info
    marker = folder / "DONE.json"
    key = stable_hash({"data": [sha256_file(p) for p in prepared.shard_paths()],
                       "items": sha256_file(prepared.root / "items.parquet"), "seed": config.seed})
    if not (marker.exists() and json.loads(marker.read_text()).get("key") == key):
        with atomic_output_dir(folder, overwrite=True) as tmp:
            # item embeddings and the RQ-VAE fit come from the shared cache ($DEALREC_CACHE), keyed by content,
            # so every run and command on the same catalogue fits them once (docs/tiger.md)
            model = build_tiger(prepared, config.seed, progress=progress)
            save_tiger(model, tmp)
            write_json_atomic(tmp / "DONE.json", {"key": key})
    # what was built, not only what it was built from: two builds with the same inputs must agree
    built = stable_hash({f: tensors_digest(folder / f) for f in ("model.safetensors", "semantic_ids.safetensors")
                         if (folder / f).exists()})
    info = {"tiger": str(folder), "fresh": True, "sha256": key, "built_sha256": built,
            "seconds": round(time.perf_counter() - t0, 3)}
    return folder, info
