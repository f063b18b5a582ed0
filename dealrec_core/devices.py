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
- ``reproducible_on(device)``: a block of work (surrogate training, influence capture, effort) that
  must give the same bits on every run. The CPU path already does (fixed thread counts); on a CUDA
  device it switches torch to its deterministic kernels for the block. Measured need: three runs of
  the same ``dealrec prune --device cuda`` on an H100 trained three surrogates with different bytes
  (atomic adds in the embedding and index-add backward), so three different coresets.
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

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


# cuBLAS needs a fixed workspace to give the same bits on every call (CUDA >= 10.2); torch refuses
# deterministic matrix products without it. Read when cuBLAS starts, so it is set before any CUDA work.
CUBLAS_WORKSPACE_ENV, CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG", ":4096:8"


def float_platform() -> dict:
    """What decides the float sums of CPU work besides the code and the thread count: the CPU's vector
    instruction set that torch's kernels were picked for (e.g. ``AVX2``, ``AVX512``), the architecture and the
    core count. Two machines that differ here give other surrogate weights for the same command
    (docs/reliability.md, "Not across CPU types")."""
    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "architecture": platform.machine(),
            "cpu_count": os.cpu_count()}


@contextlib.contextmanager
def reproducible_on(device) -> Iterator[None]:
    """Deterministic CUDA kernels for the block when ``device`` is a CUDA device; nothing changes on the CPU.

    torch's switch is process-wide, so the caller's setting is restored after the block. An op that has
    no deterministic CUDA kernel warns (torch's ``warn_only``) rather than stopping a long job.

    Attention through ``scaled_dot_product_attention`` (the transformers models: TIGER's T5, BIGRec's
    Llama) runs on its math kernels inside the block: the fused flash and memory-efficient backward
    passes sum with atomics unless torch's switch is strict (not ``warn_only``), and in the warn-only
    mode they only warn. Measured: on an H100 two runs of the same prune trained the same surrogate
    bytes but scored different TIGER efforts (the memory-efficient attention backward) until this.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    os.environ.setdefault(CUBLAS_WORKSPACE_ENV, CUBLAS_WORKSPACE)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
