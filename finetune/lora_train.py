"""BIGRec's LoRA fine-tuning on transformers' ``Trainer``.

The library owns the loop: gradient accumulation, clipping, mixed precision (``--mixed-precision``),
gradient checkpointing (``--gradient-checkpointing``), checkpoints and resume, and the launch on
several GPUs (``accelerate launch`` / ``torchrun``). What stays dealrec's, because the effort score
and the paper's protocol depend on it:

- **the loss**: the sum of next-token cross-entropies over a step's label tokens divided by that
  step's label-token count (``token_loss_sum``), whatever the micro-batch size: the Trainer counts
  the step's tokens (``num_items_in_batch``) and every micro-batch divides by that count. Position 0
  of a row is never predicted, so the collator marks its label as ignored and both counts agree;
- **the schedule**: AdamW (no weight decay) with a linear warm-up over ``min(warmup_steps, planned
  steps / 10)`` steps, then the constant rate, as before;
- **early stopping**: the validation users' mean token loss (``mean_token_loss``, one number over all
  their tokens, not a mean of batch means) after every epoch, patience in epochs, the best adapter
  kept (``load_best_model_at_end``).

Checkpoints go to a work folder beside the output (``checkpoint_dir``): a killed run started again
with the same inputs resumes from its last epoch instead of starting over (``inputs.json`` there
says what the checkpoints were made from; other inputs start afresh).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import EarlyStoppingCallback, PrinterCallback, ProgressCallback

from dealrec_core.batching import IGNORE_INDEX, pad_batch
from dealrec_core.errors import DealrecError
from dealrec_core.optim import adam

MIXED_PRECISION = ("no", "bf16", "fp16")
# transformers 5 renamed TrainingArguments.gradient_checkpointing (the old name still works, with a warning)
_CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                      else "gradient_checkpointing")
_INPUTS_FILE = "inputs.json"


# ----------------------------------------------------------------------------- batches and losses

def n_loss_tokens(examples: Sequence[dict]) -> int:
    # the first token is never predicted
    return sum(sum(1 for lab in ex["labels"][1:] if lab != IGNORE_INDEX) for ex in examples)


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; the first label of every row is ignored (nothing predicts it)."""
    batch = pad_batch([ex["input_ids"] for ex in examples], pad_id, "right", [ex["labels"] for ex in examples])
    batch["labels"][:, 0] = IGNORE_INDEX
    return batch


def _shifted_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def token_loss_sum(model, examples: Sequence[dict], pad_id: int, device) -> torch.Tensor:
    """Sum of next-token cross-entropies over the label tokens of ``examples``."""
    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    labels = batch.pop("labels")
    return _shifted_token_loss_sum(model(**batch).logits, labels)


@torch.no_grad()
def mean_token_loss(model, examples: Sequence[dict], pad_id: int, device, micro_batch_size: int) -> float:
    """Mean next-token loss over every label token of ``examples`` (dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, n_loss_tokens(examples)
    for start in range(0, len(examples), micro_batch_size):
        total += float(token_loss_sum(model, examples[start:start + micro_batch_size], pad_id, device))
    model.train(was_training)
    return total / max(count, 1)


def step_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """The Trainer's loss of one micro-batch: its token-loss sum over the whole step's token count."""
    total = _shifted_token_loss_sum(outputs.logits, labels)
    if num_items_in_batch is None:   # evaluation without a count: this batch's own mean
        num_items_in_batch = (labels[:, 1:] != IGNORE_INDEX).sum()
    return total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)


# ----------------------------------------------------------------------------- the trainer

@dataclass
class TrainResult:
    steps: int = 0
    epochs: float = 0.0
    best_valid_loss: float = math.inf
    best_epoch: float = 0.0
    stopped: str = "epochs"
    train_losses: list = field(default_factory=list)   # mean loss of each optimizer step
    valid_losses: list = field(default_factory=list)   # (epochs, loss) at each evaluation
    resumed_from: str | None = None                   # the checkpoint a killed run went on from


class _ExampleList(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[dict]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class _LoraTrainer(Trainer):
    """A Trainer whose evaluation is the validation users' mean token loss (the early-stopping score)."""

    def __init__(self, *args, valid_examples: Sequence[dict], pad_id: int, eval_micro_batch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._valid_examples, self._pad_id, self._eval_micro_batch = list(valid_examples), pad_id, eval_micro_batch

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        loss = mean_token_loss(self.model, self._valid_examples, self._pad_id, self.args.device,
                               self._eval_micro_batch)
        metrics = {f"{metric_key_prefix}_loss": loss}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class _Progress(TrainerCallback):
    """One bar over the planned steps with the step's loss (the Trainer's own bar prints every log)."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="fine-tune", unit="step", leave=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class _EvaluateAtStepCap(TrainerCallback):
    """A step cap that ends training inside an epoch still validates (and checkpoints) that last step, so
    early stopping weighs the weights it ends with, as it does at an epoch's end."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.max_steps > 0 and state.global_step >= args.max_steps:
            control.should_evaluate = control.should_save = True
        return control


def planned_steps(n_examples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    planned = math.ceil(n_examples / batch_size) * epochs
    return min(planned, max_steps) if max_steps is not None else planned


def check_batching(batch_size: int, micro_batch_size: int) -> None:
    if batch_size < 1 or micro_batch_size < 1:
        raise DealrecError("--batch-size and --micro-batch-size must be at least 1")
    if batch_size % micro_batch_size:
        raise DealrecError(f"--batch-size {batch_size} is not a multiple of --micro-batch-size {micro_batch_size}: "
                           f"a step accumulates whole micro-batches")


def check_mixed_precision(mixed_precision: str, device: torch.device) -> None:
    if mixed_precision not in MIXED_PRECISION:
        raise DealrecError(f"unknown --mixed-precision {mixed_precision!r} (choose from {', '.join(MIXED_PRECISION)})")
    if mixed_precision == "fp16" and device.type != "cuda":
        raise DealrecError("--mixed-precision fp16 needs a CUDA GPU (use bf16 or no on the CPU)")


def build_trainer(model, train_examples: Sequence[dict], valid_examples: Sequence[dict], cfg, pad_id: int, device,
                  work_dir: Path, optimizer: torch.optim.Optimizer | None = None,
                  callbacks: Sequence[TrainerCallback] = ()) -> _LoraTrainer:
    """The Trainer of ``train_lora`` (``optimizer`` replaces AdamW and ``callbacks`` are added: for tests)."""
    check_batching(cfg.batch_size, cfg.micro_batch_size)
    device = torch.device(device)
    check_mixed_precision(cfg.mixed_precision, device)
    planned = planned_steps(len(train_examples), cfg.batch_size, cfg.epochs, cfg.max_steps)
    warmup = min(cfg.warmup_steps, planned // 10)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = adam(trainable, decoupled=True, lr=cfg.lr, weight_decay=0.0)
    # lr of step s (0-based): cfg.lr * min(1, (s + 1) / (warmup + 1)) during the warm-up, then cfg.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0)
    if cfg.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()   # frozen embeddings: checkpointed blocks still need a graph
    args = TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        max_grad_norm=cfg.max_grad_norm or 0.0, learning_rate=cfg.lr,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="loss", greater_is_better=False, restore_callback_states_from_checkpoint=True,
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=device.type == "cpu", dataloader_num_workers=0,
        remove_unused_columns=False, bf16=cfg.mixed_precision == "bf16", fp16=cfg.mixed_precision == "fp16",
        log_level="error", **{_CHECKPOINTING_ARG: cfg.gradient_checkpointing})
    trainer = _LoraTrainer(
        model=model, args=args, train_dataset=_ExampleList(train_examples), eval_dataset=_ExampleList([]),
        data_collator=lambda rows: collate(rows, pad_id), compute_loss_func=step_loss,
        optimizers=(optimizer, schedule), callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience)],
        valid_examples=valid_examples, pad_id=pad_id, eval_micro_batch=cfg.micro_batch_size)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_Progress())
    trainer.add_callback(_EvaluateAtStepCap())
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def _last_checkpoint(work_dir: Path) -> Path | None:
    found = [p for p in work_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def prepare_work_dir(work_dir: Path, inputs: dict) -> Path | None:
    """The checkpoint to resume from when ``work_dir`` holds checkpoints made from ``inputs``, else None
    (the folder is emptied and its ``inputs.json`` written)."""
    record = work_dir / _INPUTS_FILE
    if record.exists():
        try:
            same = json.loads(record.read_text(encoding="utf-8")) == json.loads(json.dumps(inputs))
        except ValueError:
            same = False
        if same:
            return _last_checkpoint(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    record.write_text(json.dumps(inputs, indent=1, sort_keys=True), encoding="utf-8")
    return None


def train_lora(model, train_examples: list[dict], valid_examples: list[dict], cfg, pad_id: int, device,
               work_dir: Path, inputs: dict | None = None, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Fine-tune the LoRA adapters of ``model`` with early stopping; the model ends with its best adapter.

    ``work_dir`` holds the checkpoints; with the same ``inputs`` as a killed run's, training resumes from
    its last checkpoint. The caller removes ``work_dir`` once the results are safely written.
    """
    work_dir = Path(work_dir)
    resume = prepare_work_dir(work_dir, inputs or {})
    trainer = build_trainer(model, train_examples, valid_examples, cfg, pad_id, device, work_dir,
                            callbacks=callbacks)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model.eval()
    state = trainer.state
    result = TrainResult(steps=state.global_step, epochs=float(state.epoch or 0.0),
                         resumed_from=resume.name if resume else None)
    for entry in state.log_history:
        if "loss" in entry and "eval_loss" not in entry:
            result.train_losses.append(float(entry["loss"]))
        if "eval_loss" in entry:
            result.valid_losses.append([round(float(entry.get("epoch") or 0.0), 4), float(entry["eval_loss"])])
    if result.valid_losses:
        best = min(range(len(result.valid_losses)), key=lambda i: (result.valid_losses[i][1], i))
        result.best_epoch, result.best_valid_loss = result.valid_losses[best]
    if cfg.max_steps is not None and state.global_step >= cfg.max_steps:
        result.stopped = "max_steps"
    elif state.epoch is not None and state.epoch < cfg.epochs - 1e-9:
        result.stopped = "early_stopping"
    else:
        result.stopped = "epochs"
    return result
