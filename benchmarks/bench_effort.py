"""Benchmark (b): effort norms, batched with hooks vs a batch-size-1 autograd loop, same model.

Targets (random weights; the speed and the agreement do not depend on training):

- ``tiger``: TIGER with the default ``TigerConfig`` (4+4 layers, d_model 128) over random
  semantic IDs for the data's items; block = last decoder layer's self-attention ``v``;
- ``bigrec``: a Llama-shaped causal LM built here (``--hidden``, ``--layers``) with LoRA
  (r 8, alpha 16, q_proj/v_proj), alpaca prompts from the samples' titles; block = the last
  layer's ``v_proj`` LoRA B.

``--device cuda --dtype bf16`` runs both on a GPU (the LLM in ``--dtype``; TIGER stays fp32, as
``prune`` runs it); ``--loop-samples`` times the batch-size-1 loop on the first that many samples
only (it is the slow side), and the agreement is read on those.

    python benchmarks/bench_effort.py --data /work/data/games-prepared --samples 512
    python benchmarks/bench_effort.py --data DATA --samples 2048 --loop-samples 128 --device cuda \
        --dtype bf16 --targets bigrec --hidden 2048 --layers 16     # a Llama shape, about 0.68B parameters
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import parse_with_data
from dealrec_core.data import PreparedData
from dealrec.effort import EffortTarget, TigerTarget, per_sample_norm_loop
from dealrec_core.devices import pick_device


def tiger_target_random(data: PreparedData, seed: int, device: torch.device) -> EffortTarget:
    from finetune.rqvae import semantic_ids_from_codes
    from finetune.tiger import TigerConfig, TigerModel

    codes = np.random.default_rng(seed).integers(0, 256, size=(data.n_items, 3))
    sem, _ = semantic_ids_from_codes(codes, 256)
    return TigerTarget(TigerModel(TigerConfig(), sem, seed=seed).to(device))


def bigrec_target_random(data: PreparedData, hidden: int, layers: int, workdir: Path, device: torch.device,
                         dtype: str) -> EffortTarget:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_lm import make_tiny_causal_lm

    from dealrec.effort import bigrec_target

    titles = data.titles()
    llm = make_tiny_causal_lm("llama", [t for t in titles[1:2000] if t], workdir / "llm", hidden=hidden,
                              layers=layers, heads=max(1, hidden // 32), vocab_size=4096)
    return bigrec_target(str(llm), titles, max_tokens=256, device=str(device), dtype=dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--targets", default="tiger,bigrec")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--loop-samples", type=int, default=None,
                    help="Time the batch-size-1 loop on this many of the samples [all].")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    ap.add_argument("--dtype", default="fp32", help="The LLM's weights (bigrec): fp32, bf16 or fp16.")
    args, data, samples = parse_with_data(ap)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(samples), args.samples, replace=False))
    samples = samples.subset(idx)
    device = pick_device(args.device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    n_loop = min(args.loop_samples or len(samples), len(samples))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}, threads "
          f"{args.threads}, load average {os.getloadavg()[0]:.1f}; {args.samples} random samples of {data.root} "
          f"(the loop: the first {n_loop}); device {device}, LLM weights {args.dtype}")
    print()
    print("| target | block (shape) | batched (samples/s) | loop, batch 1 (samples/s) | speed ratio | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.targets.split(","):
            target = tiger_target_random(data, args.seed, device) if name == "tiger" else \
                bigrec_target_random(data, args.hidden, args.layers, Path(tmp), device, args.dtype)
            target.norms(samples.subset(np.arange(min(args.batch_size, len(samples)))))   # warm-up (CUDA kernels)
            _sync(device)
            t0 = time.perf_counter()
            batched = np.concatenate([target.norms(samples.subset(np.arange(lo, min(lo + args.batch_size,
                                                                                    len(samples)))))
                                      for lo in range(0, len(samples), args.batch_size)])
            _sync(device)
            t_batched = time.perf_counter() - t0
            t0 = time.perf_counter()
            loop = per_sample_norm_loop(target.sample_losses, target.block,
                                        [target.collate(samples.subset([i])) for i in range(n_loop)])
            _sync(device)
            t_loop = time.perf_counter() - t0
            rel = float(np.max(np.abs(batched[:n_loop] - loop) / np.abs(loop)))
            shape = "x".join(map(str, target.block.weight.shape))
            size = f"; Llama hidden {args.hidden}, {args.layers} layers" if name == "bigrec" else ""
            print(f"| {name} | {target.block_name} ({shape}{size}) | {len(samples) / t_batched:.1f} | "
                  f"{n_loop / t_loop:.1f} | {(t_loop / n_loop) / (t_batched / len(samples)):.1f}x | {rel:.1e} |")
            del target
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
