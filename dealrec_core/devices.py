"""Where torch work runs, and in which float type: one rule for every command.

- ``pick_device(name)``: ``auto`` is the first CUDA GPU when torch sees one, else the CPU; ``cpu``,
  ``cuda`` and ``cuda:N`` are taken as given, and a CUDA device that is not there is one
  ``DealrecError`` line (never a traceback from deep inside a model). Nothing here assumes CUDA:
  on a machine without it ``auto`` is the CPU and every result is what it was before the option.
- ``pick_dtype(name, device)``: the LLM's weights (effort's target and ``finetune bigrec``).
  ``auto`` is bfloat16 on a GPU that has it, float32 otherwise; ``bf16``/``fp16``/``fp32`` (and the
  long names ``bfloat16``/``float16``/``float32``) are taken as given.
- ``to_device(batch, device)``: a batch dict's tensors on ``device`` (other values kept), the one way
  a collated batch reaches a model that may sit on a GPU.
"""
from __future__ import annotations

import torch

from dealrec_core.errors import DealrecError

DEVICE_AUTO = "auto"
DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"
# every spelling a --dtype accepts, and the torch dtype it means (auto is decided by pick_dtype)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)


def pick_device(device: str = DEVICE_AUTO, option: str = "--device") -> torch.device:
    """The torch device ``device`` names (see the module docstring); ``option`` names it in errors."""
    name = str(device).strip()
    if name == DEVICE_AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except (RuntimeError, ValueError):
        raise DealrecError(f"{option} {name}: not a device ({DEVICE_HELP})") from None
    if chosen.type == "cpu":
        return chosen
    if chosen.type != "cuda":
        raise DealrecError(f"{option} {name}: unsupported device type {chosen.type!r} ({DEVICE_HELP})")
    if not torch.cuda.is_available():
        raise DealrecError(f"{option} {name}: no CUDA device is available (torch {torch.__version__} sees none)")
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise DealrecError(f"{option} {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0.."
                           f"cuda:{torch.cuda.device_count() - 1})")
    return chosen


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The LLM's float type: ``auto`` is bfloat16 on a GPU that supports it, else float32."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise DealrecError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_CHOICES)})") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how manifests record a dtype."""
    return str(dtype).removeprefix("torch.")


def to_device(batch: dict, device) -> dict:
    """``batch`` with every tensor moved to ``device`` (a no-op for tensors already there)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
