"""Any local HuggingFace causal-LM folder, and LoRA on it (peft).

Users bring their own LLM (Llama, Qwen2, GPT-2, Phi-3, ...) as a folder with ``config.json``,
weights and a tokenizer. Nothing here downloads: a folder that is not a complete causal
LM is a one-line ``DealrecError``.

The LoRA targets of a model are chosen in one place, ``default_lora_targets`` (the attention
projections its architecture has); ``finetune bigrec`` trains them and the effort score puts its
block on the last layer's one (``value_target``). The weights load on any device in any float type
(``dealrec_core.devices``), or 8-/4-bit through bitsandbytes on a CUDA GPU (``quantization``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dealrec_core.devices import pick_device, pick_dtype  # noqa: F401  (the names finetune.bigrec imports)
from dealrec_core.errors import DealrecError

# Files that carry a tokenizer's vocabulary (fast, sentencepiece, or BPE vocab + merges).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")

# Default LoRA targets by the attention projections a model has. The paper (Llama) adapts the
# query and value projections; models with a fused qkv projection get that one module.
_TARGET_CHOICES: Sequence[tuple[str, ...]] = (
    ("q_proj", "v_proj"),       # Llama, Qwen2, Mistral, OPT, ...
    ("c_attn",),                # GPT-2 (fused q/k/v, a Conv1D)
    ("query_key_value",),       # GPT-NeoX, Falcon, Bloom
    ("qkv_proj",),              # Phi-3
    ("Wqkv",),                  # MPT
)


QUANTIZATIONS = ("8bit", "4bit")


def quantization(load_in_8bit: bool, load_in_4bit: bool, device: torch.device) -> str | None:
    """``"8bit"``, ``"4bit"`` or None from the two flags; refused in one line where it cannot work: both
    flags, no bitsandbytes, or a device that is not a CUDA GPU (bitsandbytes' int8/nf4 kernels need one)."""
    if load_in_8bit and load_in_4bit:
        raise DealrecError("--load-in-8bit and --load-in-4bit: choose one")
    if not (load_in_8bit or load_in_4bit):
        return None
    flag = "--load-in-8bit" if load_in_8bit else "--load-in-4bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DealrecError(f"{flag} needs the bitsandbytes package (pip install bitsandbytes), which is not installed")
    if device.type != "cuda":
        raise DealrecError(f"{flag} needs a CUDA GPU (bitsandbytes); the device is {device} (pass --device cuda "
                           f"on a machine with one, or leave the flag out)")
    return "8bit" if load_in_8bit else "4bit"


def _check_causal_lm_folder(path: Path) -> dict:
    if not path.is_dir():
        raise DealrecError(f"{path}: not a folder (expected a local HuggingFace causal-LM folder)")
    config_path = path / "config.json"
    if not config_path.exists():
        raise DealrecError(f"{path}: not a HuggingFace model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DealrecError(f"{config_path}: not valid JSON ({e})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    # an encoder such as BERT has a causal-LM class too, but a folder saved as BertModel or
    # BertForMaskedLM is not one: trust the saved architecture when there is one
    archs_ok = not archs or any(a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel"))
                                for a in archs)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not archs_ok:
        raise DealrecError(f"{path}: not a causal language model (model_type {model_type!r}, "
                           f"{', '.join(archs) or 'no architectures listed'})")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise DealrecError(f"{path}: no tokenizer in the model folder (expected one of "
                           f"{', '.join(TOKENIZER_FILES)})")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise DealrecError(f"{path}: no model weights (*.safetensors or *.bin)")
    return config


def load_tokenizer(path: str | Path):
    """The folder's tokenizer, with a pad token (eos, else unk, when the model has none)."""
    from transformers import AutoTokenizer
    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types for a broken tokenizer
        raise DealrecError(f"{path}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is None:
            raise DealrecError(f"{path}: the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    if tokenizer.eos_token_id is None:
        raise DealrecError(f"{path}: the tokenizer has no eos token (generation could not stop)")
    return tokenizer


def load_causal_lm(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, quantize: str | None = None):
    """(model, tokenizer) from a local causal-LM folder; the model in eval mode on ``device``, its weights in
    ``dtype``, or ``quantize`` (``"8bit"``/``"4bit"``, see ``quantization``) with ``dtype`` as compute type."""
    from transformers import AutoModelForCausalLM
    path = Path(path)
    _check_causal_lm_folder(path)
    tokenizer = load_tokenizer(path)
    device = torch.device(device)
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise DealrecError(f"unknown quantization {quantize!r} (choose from {', '.join(QUANTIZATIONS)})")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit" else
                                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=dtype))
        # a quantized model is placed while it loads (bitsandbytes refuses a later .to)
        kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        raise DealrecError(f"{path}: cannot load the model: {str(e).splitlines()[0]}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if quantize is None:
        model = model.to(device)
    return model.eval(), tokenizer


def default_lora_targets(model: nn.Module) -> list[str]:
    """The attention projections to adapt: q_proj/v_proj where they exist, else the fused one."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for choice in _TARGET_CHOICES:
        if all(t in leaf_names for t in choice):
            return list(choice)
    raise DealrecError(f"{type(model).__name__}: no known attention projection to adapt "
                       f"(pass --target-modules)")


def value_target(targets: Sequence[str]) -> str:
    """Of a model's LoRA targets, the one whose last-layer LoRA B carries the effort score: ``v_proj`` (the
    paper's) where the projections are apart, else the fused q/k/v projection (``c_attn``, ``qkv_proj``...)."""
    targets = list(targets)
    return "v_proj" if "v_proj" in targets else targets[-1]


def attach_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                target_modules: Sequence[str] | None = None, adapter: str | Path | None = None):
    """Wrap ``model`` with trainable LoRA adapters (new ones, or ``adapter``'s to continue from)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):
        # peft's recipe for LoRA on 8-/4-bit weights (norms in float32, input gradients on); the forward
        # pass is otherwise unchanged: no gradient checkpointing is switched on here
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter is not None:
        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").exists():
            raise DealrecError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
        try:
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
        except Exception as e:
            raise DealrecError(f"{adapter}: cannot load the adapter onto this model: "
                               f"{str(e).splitlines()[0]}") from None
    targets = list(target_modules) if target_modules else default_lora_targets(model)
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaf_names]
    if missing:
        raise DealrecError(f"{type(model).__name__}: no module named {', '.join(missing)} to adapt")
    # GPT-2's Conv1D stores its weight transposed; peft must be told.
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for name, m in model.named_modules()
                         if name.rsplit(".", 1)[-1] in targets)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)
