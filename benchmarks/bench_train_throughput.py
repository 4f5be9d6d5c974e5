"""Training throughput: expunge's loop (``train`` + ``LMObjective``) vs ``transformers.Trainer``.

What it measures
    Both trainers get a fresh copy of the same weights, the same LoRA config (or full
    fine-tuning with ``--mode full``), the same tokenized chat examples (``place_qa``) drawn
    in the *same* order (the Trainer's sampler replays expunge's seeded ``StreamSampler``),
    the same collator (``expunge.data.collate``: right padding, ``-100`` label mask), the
    same batch size and number of steps, and the same optimizer (``torch.optim.AdamW``, same
    lr, constant schedule, grad-norm clip 1.0). No eval, no checkpoints, minimal logging,
    ``dataloader_num_workers=0``.

    Timed: the training steps only (from just before the first batch to the end of the last
    step); model loading and LoRA attachment are excluded, trainer setup is reported
    separately ("call total"). Tokens are non-padding tokens processed. One untimed warm-up
    step runs for each side first, then ``--repeats`` rounds alternate which side goes
    first; medians are reported. Final and mean losses are printed to check that both
    trainers optimize the same thing.

How to run
    .venv/bin/python benchmarks/bench_train_throughput.py              # embedded SmolLM2-135M, LoRA
    .venv/bin/python benchmarks/bench_train_throughput.py --mode full
    .venv/bin/python benchmarks/bench_train_throughput.py --tiny             # tiny llama, overhead-bound

CPU timings are noisy when other processes share the machine; use ``--repeats`` to get a
median over several rounds.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import Sampler

from expunge.data import FormatSettings, collate, tokenize_examples
from expunge.data.synthetic import place_qa
from expunge.models.lora import LoraSettings
from expunge.train import LMObjective, TrainSettings, prepare_trainable, train
from expunge.train.loop import StreamSampler

console = Console(width=120)


@dataclass
class Run:
    steps_s: float  # wall time of the training steps
    call_s: float  # trainer construction + train() call (setup included)
    step_s: list[float]  # per-step durations
    tokens: int  # non-padding tokens processed
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.steps_s if self.steps_s > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def warn_if_busy(out: Console) -> None:
    """Busy CPU + several torch threads = threads waiting on each other: timings balloon."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores and torch.get_num_threads() > 1:
        out.print(
            f"[yellow]machine busy (load {load:.1f} on {cores} cores): timings will be noisy; "
            f"--threads 1 is much steadier on a shared CPU[/]"
        )


def fresh_model(base: torch.nn.Module, settings: TrainSettings, seed: int) -> torch.nn.Module:
    """A deep copy of the base weights, prepared (LoRA or full) with a fixed seed for LoRA init."""
    torch.manual_seed(seed)
    return prepare_trainable(copy.deepcopy(base), settings)


def run_ours(base, data, settings: TrainSettings, pad_id: int, device: torch.device) -> Run:
    model = fresh_model(base, settings, settings.seed)
    _sync(device)
    started = time.perf_counter()
    _, result = train(model, {"train": data}, LMObjective(), settings, pad_token_id=pad_id)
    _sync(device)
    call_s = time.perf_counter() - started
    ends = [r["elapsed_s"] for r in result.history]
    steps = [b - a for a, b in itertools.pairwise([0.0, *ends])]
    losses = [r["loss"] for r in result.history]
    del model
    return Run(result.wall_time_s, call_s, steps, result.tokens, losses)


class _ReplaySampler(Sampler[int]):
    """The exact index sequence expunge's loop draws (``StreamSampler``, stream 0)."""

    def __init__(self, size: int, seed: int, count: int) -> None:
        self.order = StreamSampler(size, seed, salt=0).take(count)

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def run_trainer(base, data, settings: TrainSettings, pad_id: int, device: torch.device) -> Run:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    steps, batch = settings.max_steps, settings.batch_size
    stamps: list[float] = []
    losses: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            _sync(device)
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == steps:
                _sync(device)  # only the last step: no extra syncs inside the run
            stamps.append(time.perf_counter())

    class BenchTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return _ReplaySampler(len(data), settings.seed, steps * batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens.append(inputs["attention_mask"].sum())
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append((loss[0] if return_outputs else loss).detach())
            return loss

    model = fresh_model(base, settings, settings.seed)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            learning_rate=settings.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=settings.weight_decay,
            adam_beta1=settings.adam_betas[0],
            adam_beta2=settings.adam_betas[1],
            adam_epsilon=settings.adam_eps,
            max_grad_norm=settings.max_grad_norm,
            optim="adamw_torch",
            seed=settings.seed,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,  # expunge's loop does not pin either
            use_cpu=device.type == "cpu",
            bf16=settings.precision == "bf16",  # the same autocast as our loop's
            fp16=False,
        )
        _sync(device)
        started = time.perf_counter()
        trainer = BenchTrainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=lambda examples: collate(examples, pad_id),
            callbacks=[Clock()],
        )
        trainer.remove_callback(PrinterCallback)  # no end-of-training metrics print
        trainer.train()
        _sync(device)
        call_s = time.perf_counter() - started
    step_s = [b - a for a, b in itertools.pairwise(stamps)]
    del trainer, model
    return Run(
        stamps[-1] - stamps[0],
        call_s,
        step_s,
        int(sum(int(t) for t in tokens)),
        [float(x) for x in losses],
    )


def drop_stale_gguf_quantization(model: torch.nn.Module) -> None:
    """The embedded model is saved dequantized (fp32) but its config still carries the GGUF
    ``quantization_config``, so transformers marks it quantized and ``Trainer`` refuses to
    train it. The weights are plain tensors: drop the stale marker (benchmark-side workaround).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) == "gguf":
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.quantization_config = None
        del model.config.quantization_config


def load(args):
    if args.tiny:
        from expunge.models.tiny import tiny_model

        model, tokenizer = tiny_model("llama", hidden=args.tiny_hidden, layers=args.tiny_layers)
        device = torch.device("cpu")
        label = f"tiny llama (hidden {args.tiny_hidden}, {args.tiny_layers} layers)"
    else:
        from expunge.models import load_model

        loaded = load_model(args.model)
        model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
        label = args.model
        drop_stale_gguf_quantization(model)
    model.train()
    n_places = (args.examples + 1) // 2
    examples = place_qa(n_places, seed=0, per_place=2)[: args.examples]
    data = tokenize_examples(
        examples, tokenizer, FormatSettings(template="chat", loss_on="response")
    )
    return model, tokenizer, data, device, label


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="embedded name, local dir or hub id"
    )
    parser.add_argument("--tiny", action="store_true", help="use a tiny random llama instead")
    parser.add_argument("--tiny-hidden", type=int, default=32)
    parser.add_argument("--tiny-layers", type=int, default=2)
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-targets", default="q_proj,v_proj")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=32, help="place_qa chat examples")
    parser.add_argument("--steps", type=int, default=None, help="default 8 (50 with --tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="default 1 (5 with --tiny)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up steps")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="both trainers: fp32, or bf16 autocast over fp32 weights (Trainer's bf16=True)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warn_if_busy(console)
    steps = args.steps or (50 if args.tiny else 8)
    repeats = args.repeats or (5 if args.tiny else 1)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    t0 = time.perf_counter()
    base, _tokenizer, data, device, label = load(args)
    pad_id = _tokenizer.pad_token_id
    console.print(
        f"[bold]{label}[/] on {device} ({torch.get_num_threads()} threads), mode={args.mode}, "
        f"batch {args.batch_size}, {steps} steps, {len(data)} examples, "
        f"{repeats} repeat(s); loaded in {time.perf_counter() - t0:.1f}s"
    )

    def settings_for(n_steps: int, batch_size: int = args.batch_size) -> TrainSettings:
        return TrainSettings(
            mode=args.mode,
            lora=LoraSettings(
                r=args.lora_r, alpha=2.0 * args.lora_r, targets=args.lora_targets.split(",")
            ),
            max_steps=n_steps,
            batch_size=batch_size,
            lr=args.lr,
            schedule="constant",
            max_grad_norm=1.0,
            seed=args.seed,
            progress=False,
            log_every=1,
            precision=args.precision,
        )

    runners = {"expunge": run_ours, "Trainer": run_trainer}
    if not args.no_warmup:
        for name, runner in runners.items():
            t = time.perf_counter()
            # one small step: warms kernels, allocator and lazy imports, not timed
            runner(base, data, settings_for(1, min(2, args.batch_size)), pad_id, device)
            console.print(f"warm-up step ({name}): {time.perf_counter() - t:.1f}s")

    results: dict[str, list[Run]] = {name: [] for name in runners}
    for rep in range(repeats):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for name in order:
            run = runners[name](base, data, settings_for(steps), pad_id, device)
            results[name].append(run)
            console.print(
                f"round {rep + 1}/{repeats} {name:>8}: {run.steps_s:.2f}s steps, "
                f"{run.tokens_per_s:.0f} tok/s, final loss {run.losses[-1]:.4f}"
            )

    def med(name: str, fn) -> float:
        return statistics.median(fn(r) for r in results[name])

    ours, hf = results["expunge"], results["Trainer"]
    tps = {name: med(name, lambda r: r.tokens) / med(name, lambda r: r.steps_s) for name in runners}
    rows = [
        ("steps wall time (s, median)", lambda r: r.steps_s, "{:.3f}", True),
        ("tokens/s (non-padding)", None, "{:.1f}", False),
        ("median step time (s)", lambda r: statistics.median(r.step_s), "{:.3f}", True),
        ("call total incl. setup (s)", lambda r: r.call_s, "{:.3f}", True),
        ("tokens processed", lambda r: r.tokens, "{:.0f}", None),
        ("first-step loss", lambda r: r.losses[0], "{:.4f}", None),
        ("final loss", lambda r: r.losses[-1], "{:.4f}", None),
        ("mean loss over steps", lambda r: sum(r.losses) / len(r.losses), "{:.4f}", None),
    ]
    table = Table(
        title=f"Training throughput: {label}, {args.mode}, batch {args.batch_size}, {steps} steps"
    )
    table.add_column("metric")
    table.add_column("expunge.train", justify="right")
    table.add_column("HF Trainer", justify="right")
    table.add_column("ours/Trainer", justify="right")
    for title, fn, fmt, lower_is_better in rows:
        a, b = (
            (tps["expunge"], tps["Trainer"])
            if fn is None
            else (med("expunge", fn), med("Trainer", fn))
        )
        if lower_is_better is None:
            ratio = ""
        else:
            speed = (b / a) if lower_is_better else (a / b)  # >1 means ours is faster
            ratio = f"{speed:.3f}x" if a and b else "n/a"
        table.add_row(title, fmt.format(a), fmt.format(b), ratio)
    console.print(table)
    speed = tps["expunge"] / tps["Trainer"]
    verdict = "[green]OK[/]" if speed >= 1.0 else "[red]SLOWER[/]"
    console.print(f"throughput ratio ours/Trainer = {speed:.3f} (goal >= 1.0): {verdict}")
    gap = abs(ours[-1].losses[-1] - hf[-1].losses[-1])
    console.print(
        f"final-loss gap |ours - Trainer| = {gap:.4f} (LoRA dropout draws may differ, so not always bit-equal)"
    )
    console.print(
        "[dim]ratios are speed-ups: >1 means expunge is faster. CPU figures are noisy.[/]"
    )


if __name__ == "__main__":
    main()
