"""The pieces of ``benchmarks/gpu_check.sh``: training throughput and MFU of expunge's loop vs
Hugging Face ``Trainer`` on a randomly initialised Llama, and a tiny model directory for the
script's CPU dry mode.

    python benchmarks/gpu_check.py train --size 1b --steps 12        # ours vs Trainer, bf16
    python benchmarks/gpu_check.py train --size tiny --ours-only     # (under accelerate launch)
    python benchmarks/gpu_check.py tiny-dir DIR                      # a tiny causal LM on disk

``train`` builds the model from a config with random weights (speed does not depend on what the
weights know), feeds both trainers the same random-token sequences in the same order, full
fine-tuning with AdamW, bf16 autocast over fp32 weights where the device has bf16 (HF's
``bf16=True``; fp32 elsewhere), and times the steps after ``--warmup`` untimed ones. MFU is
model FLOPs per second (6 × the parameters of every linear layer + 12 × layers × hidden ×
sequence, per token: forward and backward) over the device's peak: its dense bf16 figure from
the vendor's data sheet where the name is known, and the rate of a large bf16 matmul measured
here (``peak_measured``), which is what a kernel can reach on this device. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity).
SPEC_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}

SIZES = {
    # TinyLlama-1.1B's shape: about 1.1 B parameters
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
           "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512},
}  # fmt: skip


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def spec_peak(name: str) -> float | None:
    for key, tflops in sorted(SPEC_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def measured_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large matmul in ``dtype`` on ``device`` (the best of a few)."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - started))
    return best


def build_model(size: str, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SIZES[size], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.float()


def flops_per_token(model, seq_len: int) -> float:
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    return 6.0 * linear + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def random_data(n: int, seq_len: int, vocab: int):
    from expunge.data.formatting import TokenizedExample

    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(3, vocab, (n, seq_len), generator=generator).tolist()
    return [TokenizedExample(r, list(r), 0) for r in rows]


def run_ours(model, data, args, precision: str) -> dict:
    from expunge.train import LMObjective, TrainSettings, train

    settings = TrainSettings(
        mode="full", max_steps=args.warmup + args.steps, batch_size=args.batch_size, lr=1e-5,
        progress=False, precision=precision, seed=0,
    )  # fmt: skip
    stamps: list[float] = []

    def on_step(step: int, record: dict) -> None:
        if step == args.warmup:
            _sync()
            stamps.append(time.perf_counter())

    _, result = train(model, {"train": data}, LMObjective(), settings, pad_token_id=0,
                      on_step=on_step)  # fmt: skip
    _sync()
    wall = time.perf_counter() - stamps[0]
    from accelerate.state import PartialState

    return {
        "tokens_per_s": args.steps * args.batch_size * args.seq_len / wall,
        "final_loss": result.final_loss,
        "precision": result.precision,
        "distributed_type": str(PartialState().distributed_type),
        "world_size": PartialState().num_processes,
        # FSDP (accelerate's on a GPU, the loop's own on CPU processes) hands back a gathered state
        "sharded": result.full_state_dict is not None,
    }


def run_trainer(model, data, args, precision: str) -> dict:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from expunge.data.collator import collate

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == args.warmup:
                _sync()
                stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, max_steps=args.warmup + args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=1e-5,
            lr_scheduler_type="constant", optim="adamw_torch", max_grad_norm=1.0, seed=0,
            save_strategy="no", logging_strategy="no", eval_strategy="no", report_to=[],
            disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
            bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
        )  # fmt: skip
        trainer = Trainer(model=model, args=targs, train_dataset=data,
                          data_collator=lambda rows: collate(rows, 0), callbacks=[Clock()])  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
        _sync()
    wall = time.perf_counter() - stamps[0]
    return {"tokens_per_s": args.steps * args.batch_size * args.seq_len / wall,
            "final_loss": result.training_loss}  # fmt: skip


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def command_train(args: argparse.Namespace) -> None:
    from expunge.models.device import pick_device, resolve_precision

    device = pick_device("auto")
    precision = resolve_precision("auto", device)
    n = (args.warmup + args.steps) * args.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
    out: dict = {"device": device_name(), "size": args.size, "batch_size": args.batch_size,
                 "seq_len": args.seq_len, "steps": args.steps, "precision": precision}  # fmt: skip
    model = build_model(args.size, device)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    per_token = flops_per_token(model, args.seq_len)
    data = random_data(n, args.seq_len, model.config.vocab_size)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    runs = {"ours": run_ours(model, data, args, precision)}
    if not args.ours_only:
        model.load_state_dict(state)  # the same starting weights for the Trainer
        runs["trainer"] = run_trainer(model, data, args, precision)
    del state
    peak_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peaks = {"peak_measured": measured_peak(device, peak_dtype)}
    if spec_peak(out["device"]) is not None:
        peaks["peak_spec"] = spec_peak(out["device"])
    world = runs["ours"].get("world_size", 1)
    for run in runs.values():
        achieved = run["tokens_per_s"] * world * per_token
        run["tflops"] = achieved / 1e12
        for name, peak in peaks.items():
            run[f"mfu_vs_{name.removeprefix('peak_')}"] = achieved / (peak * world)
    if "trainer" in runs:
        out["ours_over_trainer"] = runs["ours"]["tokens_per_s"] / runs["trainer"]["tokens_per_s"]
    out.update(runs=runs, **{k: v / 1e12 for k, v in peaks.items()})
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(out))


def command_tiny_dir(args: argparse.Namespace) -> None:
    """A tiny random Llama with expunge's tiny tokenizer (chat template included), on disk."""
    from expunge.models.tiny import tiny_model

    model, tokenizer = tiny_model("llama", seed=0, hidden=64, layers=2)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.dir, safe_serialization=True)
    tokenizer.save_pretrained(args.dir)
    print(args.dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    train.add_argument("--size", choices=sorted(SIZES), default="1b")
    train.add_argument("--steps", type=int, default=12)
    train.add_argument("--warmup", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--seq-len", type=int, default=512)
    train.add_argument("--ours-only", action="store_true")
    tiny = commands.add_parser("tiny-dir")
    tiny.add_argument("dir")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from expunge.errors import ExpungeError

    try:
        {"train": command_train, "tiny-dir": command_tiny_dir}[args.command](args)
    except ExpungeError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.flush()


if __name__ == "__main__":
    main()
