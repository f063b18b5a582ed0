"""Devices, float types and architectures: one rule for every command, correct on a CPU-only machine.

- ``--device``/``--dtype`` resolve the same way everywhere (``dealrec_core.devices``); a device or a
  quantization that cannot work here is one line, before any output exists;
- the LoRA targets come from one function (``finetune.llm.default_lora_targets``) for ``finetune bigrec``
  and for effort alike, so effort works on tiny GPT-2, Qwen2, Phi-3 and Llama models (its block: the last
  layer's ``v_proj`` LoRA B, or the fused q/k/v projection's), and equals the per-sample autograd loop;
- ``finetune bigrec --max-steps 2`` works on the same four architectures;
- on a CUDA GPU (skipped here when there is none), capture and effort on the GPU agree with the CPU.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.effort import bigrec_target, per_sample_norm_loop
from dealrec_core.devices import DTYPE_CHOICES, pick_device, pick_dtype, reproducible_on, to_device
from dealrec_core.errors import DealrecError
from finetune.llm import default_lora_targets, load_causal_lm, quantization, value_target
from tiny_lm import KINDS, make_tiny_causal_lm
from tiny_surrogate import tiny_samples

N_ITEMS = 12
TITLES = [""] + [f"Quest of the {w} Kingdom {i}" for i, w in
                 enumerate(["Red", "Blue", "Green", "Silver", "Iron", "Golden", "Shadow", "Crystal",
                            "Storm", "Ember", "Frost", "Night"], 1)]
NO_GPU = "needs a CUDA GPU (this machine has none; CI runs on CPUs only)"


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    return {kind: make_tiny_causal_lm(kind, TITLES[1:], root / kind, hidden=16, layers=2) for kind in KINDS}


# ----------------------------------------------------------------------------- one rule for devices and dtypes

def test_devices_and_dtypes_resolve_by_one_rule():
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "meta"):
        with pytest.raises(DealrecError, match=rf"--device {bad}: "):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DealrecError, match="--device cuda: no CUDA device is available"):
            pick_device("cuda")
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32     # the CPU keeps the results it always gave
    for short, long in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
        assert pick_dtype(short, cpu) == pick_dtype(long, cpu) == getattr(torch, long)
        assert short in DTYPE_CHOICES and long in DTYPE_CHOICES
    with pytest.raises(DealrecError, match="unknown dtype 'int8'"):
        pick_dtype("int8", cpu)
    batch = to_device({"ids": torch.ones(2), "name": "kept"}, cpu)
    assert batch["name"] == "kept" and batch["ids"].device == cpu


def test_quantization_without_a_gpu_is_one_line_before_any_work(models, tmp_path):
    with pytest.raises(DealrecError, match="choose one"):
        quantization(True, True, torch.device("cpu"))
    assert quantization(False, False, torch.device("cpu")) is None
    with pytest.raises(DealrecError, match=r"--load-in-8bit needs (the bitsandbytes package|a CUDA GPU)"):
        quantization(True, False, torch.device("cpu"))
    # the commands: refused in one line, nothing written
    out = tmp_path / "out"
    res = _cli("finetune", "bigrec", "--llm", models["llama"], "--data", tmp_path / "nodata", "--train",
               tmp_path / "nodata", "--out", out, "--load-in-4bit", "--device", "cpu")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and not out.exists()
    res = _cli("score", tmp_path / "nodata", "--surrogate", tmp_path / "nosur", "--out", out, "--target", "tiger",
               "--load-in-8bit")
    assert res.exit_code == 2 and "quantize the LLM of --target bigrec" in res.output and not out.exists()
    res = _cli("score", tmp_path / "nodata", "--surrogate", tmp_path / "nosur", "--out", out, "--target", "bigrec",
               "--llm", models["llama"], "--load-in-4bit", "--device", "cpu")
    assert res.exit_code == 2 and "--load-in-4bit needs" in res.output and not out.exists()
    res = _cli("score", tmp_path / "nodata", "--surrogate", tmp_path / "nosur", "--out", out, "--device", "tpu")
    assert res.exit_code == 2 and "--device tpu: not a device" in res.output and not out.exists()


# ----------------------------------------------------------------------------- one choice of LoRA targets

@pytest.mark.parametrize("kind", KINDS)
def test_effort_works_on_every_architecture(kind, models):
    base, _ = load_causal_lm(models[kind])
    targets = default_lora_targets(base)
    target = bigrec_target(str(models[kind]), TITLES, max_tokens=96)
    assert target.info["lora"]["target_modules"] == sorted(targets)       # finetune bigrec's choice
    assert {"gpt2": ["c_attn"], "phi3": ["qkv_proj"]}.get(kind, ["q_proj", "v_proj"]) == targets
    layer = "h.1" if kind == "gpt2" else "layers.1"                          # the last of 2 layers
    assert target.block_name.endswith(f"{layer}.attn.{value_target(targets)}.lora_B.default" if kind == "gpt2"
                                      else f"{layer}.self_attn.{value_target(targets)}.lora_B.default")
    samples = tiny_samples(6, N_ITEMS, seed=1, max_hist=5)
    loop = per_sample_norm_loop(target.sample_losses, target.block,
                                [target.collate(samples.subset([i])) for i in range(len(samples))])
    assert np.all(loop > 0)
    np.testing.assert_allclose(target.norms(samples), loop, rtol=1e-4)


def test_effort_in_bf16_follows_fp32_and_records_it(models):
    samples = tiny_samples(6, N_ITEMS, seed=2, max_hist=5)
    fp32 = bigrec_target(str(models["llama"]), TITLES, max_tokens=96, dtype="fp32")
    bf16 = bigrec_target(str(models["llama"]), TITLES, max_tokens=96, dtype="bf16")
    assert fp32.info["dtype"] == "float32" and bf16.info["dtype"] == "bfloat16" and bf16.info["device"] == "cpu"
    a, b = fp32.norms(samples), bf16.norms(samples)
    assert not np.array_equal(a, b)                      # bf16 weights really were used
    np.testing.assert_allclose(b, a, rtol=2e-2)          # and give the same effort up to bf16 rounding


def test_the_template_reaches_the_effort_prompt(models):
    samples = tiny_samples(4, N_ITEMS, seed=3, max_hist=4)
    games = bigrec_target(str(models["qwen2"]), TITLES, max_tokens=96)
    books = bigrec_target(str(models["qwen2"]), TITLES, max_tokens=96, template="books")
    assert games.info["template"] == "games" and books.info["template"] == "books"
    assert not np.allclose(games.norms(samples), books.norms(samples))
    with pytest.raises(DealrecError, match="unknown prompt template 'cars'"):
        bigrec_target(str(models["qwen2"]), TITLES, template="cars")


# ----------------------------------------------------------------------------- finetune bigrec, 2 steps each

@pytest.fixture(scope="module")
def bigrec_inputs(tmp_path_factory):
    from test_bigrec import TITLES as BIGREC_TITLES, _write_prepared

    root = tmp_path_factory.mktemp("bigrec-arch")
    prepared = _write_prepared(root / "prepared")
    models = {kind: make_tiny_causal_lm(kind, BIGREC_TITLES[1:], root / kind, hidden=16, layers=2) for kind in KINDS}
    return prepared, models


@pytest.mark.parametrize("kind", KINDS)
def test_finetune_bigrec_two_steps_on_every_architecture(kind, bigrec_inputs, tmp_path):
    prepared, models = bigrec_inputs
    out = tmp_path / "out"
    dtype = "bf16" if kind == "llama" else "fp32"        # one of them in bf16: the dtype reaches the model
    res = _cli("finetune", "bigrec", "--llm", models[kind], "--data", prepared, "--train", prepared / "samples",
               "--out", out, "--max-steps", 2, "--batch-size", 4, "--micro-batch-size", 2, "--max-users", 3,
               "--num-beams", 1, "--max-new-tokens", 4, "--valid-loss-samples", 4, "--device", "cpu",
               "--dtype", dtype, "--threads", 1)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 2 and manifest["device"] == "cpu"
    assert manifest["dtype"] == {"bf16": "bfloat16", "fp32": "float32"}[dtype] and manifest["quantization"] is None
    base, _ = load_causal_lm(models[kind])
    assert manifest["lora"]["target_modules"] == sorted(default_lora_targets(base))
    assert all(np.isfinite(manifest["training"]["train_losses"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_users"] == {"valid": 3, "test": 3}


# ----------------------------------------------------------------------------- the surrogate's device

def test_the_surrogate_records_its_device_and_prune_retrains_on_another(tmp_path):
    from dealrec.prune import _stale_surrogate
    from dealrec_core.data import PreparedData
    from surrogates.train import TrainConfig, train_surrogate
    from test_surrogate_train import TINY_MODEL, make_prepared

    data = make_prepared(tmp_path / "data", n_users=30)
    cfg = TrainConfig(max_epochs=1, progress=False, device="cpu")
    metrics = train_surrogate(data, "sasrec", tmp_path / "sur", TINY_MODEL, cfg)
    assert metrics["device"] == "cpu" and metrics["train_config"]["device"] == "cpu"
    folder = tmp_path / "sur"
    recorded = json.loads((folder / "metrics.json").read_text())
    recorded["model_fields"] = {}   # as prune trains it (the default SASRec); only the device is under test
    (folder / "metrics.json").write_text(json.dumps(recorded))
    assert _stale_surrogate(folder, PreparedData(data), cfg) is None
    recorded["device"] = "cuda:0"
    (folder / "metrics.json").write_text(json.dumps(recorded))
    assert _stale_surrogate(folder, PreparedData(data), cfg) == "the surrogate there was trained on cuda:0, not cpu"
    del recorded["device"]          # a surrogate trained before the option: on the CPU
    (folder / "metrics.json").write_text(json.dumps(recorded))
    assert _stale_surrogate(folder, PreparedData(data), cfg) is None


def test_reproducible_on_switches_cuda_to_deterministic_kernels_for_the_block_only(monkeypatch):
    """The switch is process-wide: it must be on inside the block on a CUDA device, and the caller's
    setting must come back after it (a comparison runs many trainings in one process). On the CPU the
    block runs as it always did. (Flipping the flags needs no GPU; that it makes GPU runs repeat is the
    CUDA test below.)"""
    # set, then removed: monkeypatch records the variable's original state, so what the block sets is undone
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert not torch.are_deterministic_algorithms_enabled()
    with reproducible_on(torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    cudnn = torch.backends.cudnn
    benchmark_before = cudnn.benchmark
    fused = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled,
             torch.backends.cuda.cudnn_sdp_enabled)
    fused_before = [f() for f in fused]
    with reproducible_on("cpu"):
        assert [f() for f in fused] == fused_before
    with reproducible_on("cuda:0"):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        # attention on its math kernels: the fused backward passes sum with atomics in warn-only mode
        assert not any(f() for f in fused) and torch.backends.cuda.math_sdp_enabled()
    assert [f() for f in fused] == fused_before
    assert not torch.are_deterministic_algorithms_enabled() and not cudnn.deterministic
    assert cudnn.benchmark == benchmark_before
    torch.use_deterministic_algorithms(True)        # a caller that asked for strict determinism keeps it
    try:
        with reproducible_on("cuda"):
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------- on a GPU (skipped without one)

@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_surrogate_training_on_the_gpu_repeats_bit_for_bit(tmp_path):
    """Three prunes on an H100 trained three different surrogates before ``reproducible_on``."""
    from safetensors.torch import load_file

    from surrogates.train import TrainConfig, train_surrogate
    from test_surrogate_train import TINY_MODEL, make_prepared

    data = make_prepared(tmp_path / "data", n_users=60)
    for run in ("a", "b"):
        train_surrogate(data, "sasrec", tmp_path / run, TINY_MODEL,
                        TrainConfig(max_epochs=3, progress=False, device="cuda"))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_tiger_effort_on_the_gpu_repeats_bit_for_bit(tmp_path):
    """Two GPU prunes with the same surrogate bytes scored different TIGER efforts: T5's attention backward
    ran on the memory-efficient kernel, which sums with atomics unless torch's switch is strict."""
    from dealrec.effort import tiger_target
    from finetune.rqvae import semantic_ids_from_codes
    from finetune.tiger import TigerConfig, TigerModel, save_tiger

    n_items = 300
    sem, _ = semantic_ids_from_codes(np.random.default_rng(0).integers(0, 32, size=(n_items, 3)), 32)
    cfg = TigerConfig(d_model=128, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32,
                      dropout=0.1, max_history_items=20)
    save_tiger(TigerModel(cfg, sem, seed=0), tmp_path / "tiger")
    samples = tiny_samples(256, n_items, seed=4, max_hist=20)
    runs = []
    for _ in range(2):
        target = tiger_target(str(tmp_path / "tiger"), device="cuda")
        with reproducible_on("cuda"):
            runs.append(target.norms(samples))
    assert np.all(runs[0] > 0) and runs[0].tobytes() == runs[1].tobytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_capture_and_effort_on_the_gpu_agree_with_the_cpu(models):
    from dealrec.influence import LinearTaps, capture_samples, freeze_all_but
    from surrogates.registry import build_surrogate

    samples = tiny_samples(16, N_ITEMS, seed=5, max_hist=6)
    rows = {}
    for device in ("cpu", "cuda"):
        model = build_surrogate("sasrec", n_items=N_ITEMS, hidden=16, n_blocks=1, n_heads=2, ffn_hidden=32,
                                max_len=10, dropout=0.0, seed=0).to(device).eval()
        block = model.influence_block()
        freeze_all_but(model, block)
        rows[device] = capture_samples(model, LinearTaps(block), samples)
        scores = model.score_histories(list(samples.history))
        assert scores.device.type == "cpu" and scores.shape == (len(samples), N_ITEMS + 1)
    np.testing.assert_allclose(rows["cuda"].grad_sum, rows["cpu"].grad_sum, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(rows["cuda"].losses, rows["cpu"].losses, rtol=1e-5)
    cpu = bigrec_target(str(models["llama"]), TITLES, max_tokens=96, device="cpu", dtype="fp32")
    gpu = bigrec_target(str(models["llama"]), TITLES, max_tokens=96, device="cuda", dtype="fp32")
    assert gpu.info["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.norms(samples), cpu.norms(samples), rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_tiger_ranks_the_same_items_on_the_gpu():
    from test_tiger import tiny_model

    model = tiny_model()
    histories = [np.array([1, 2, 3]), np.array([], np.int64), np.array([7, 9])]
    on_cpu = model.rank(histories, k=10, beam_size=10)
    on_gpu = model.to("cuda").rank(histories, k=10, beam_size=10)
    np.testing.assert_array_equal(on_gpu, on_cpu)
