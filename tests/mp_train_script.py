"""Helper for tests/test_multiprocess.py (not a test): train tiny models and dump the curves.

Run as ``python tests/mp_train_script.py OUT_DIR --batch-size 8`` (one process) or under
``accelerate launch`` (several). Each process writes ``OUT_DIR/rank{N}.json`` with, per mode
(full and LoRA), the loss curve, the grad norms, the label-token counts and the world size, and
``OUT_DIR/rank{N}-{mode}.pt`` with the final trainable parameters (under FSDP: the gathered
whole tensors on rank 0, this process's shards elsewhere). ``--resume`` continues each mode's
run from its latest checkpoint in OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator

from expunge.data import Example, FormatSettings, tokenize_examples
from expunge.data.synthetic import place_qa
from expunge.models.lora import LoraSettings
from expunge.models.tiny import tiny_model
from expunge.train import LMObjective, TrainSettings, prepare_trainable, train


def varied_examples() -> list[Example]:
    """Responses repeated 1-4 times, so examples carry very different numbers of label tokens."""
    return [
        Example(prompt=e.prompt, response=" ".join([e.response] * (1 + i % 4)))
        for i, e in enumerate(place_qa(10, seed=0))
    ]


def own_part(param: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) parameter; the parameter itself otherwise."""
    return param.to_local() if hasattr(param, "to_local") else param


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)  # per process
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    report: dict[str, dict] = {}
    rank = 0
    for mode in ("full", "lora"):
        accelerator = Accelerator(cpu=True)  # CPU even where a GPU exists: gloo, exact float32
        rank = accelerator.process_index
        model, tok = tiny_model("llama", seed=0)
        data = tokenize_examples(varied_examples(), tok, FormatSettings())
        settings = TrainSettings(
            mode=mode,
            # No dropout: its masks depend on which process holds which example.
            lora=LoraSettings(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"]),
            max_steps=args.steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            lr=1e-2 if mode == "lora" else 3e-3,
            schedule="cosine",
            warmup_steps=1,
            max_grad_norm=0.5,
            save_every=2,  # checkpointing must work (and not hang) under several processes
            keep_checkpoints=2,  # a resume from step 2 is checked against the whole run
            progress=False,
            precision="fp32",  # the comparison is exact float32 (bf16 rounding differs by split)
        )
        model = prepare_trainable(model, settings)
        model, result = train(
            model, {"train": data}, LMObjective(), settings, tok.pad_token_id,
            out_dir=args.out / f"run-{mode}-world{accelerator.num_processes}",
            accelerator=accelerator, resume=args.resume,
        )  # fmt: skip
        local = {n: p for n, p in model.named_parameters() if p.requires_grad}
        full = result.full_state_dict
        trainable = {
            n: (full[n] if full else own_part(p)).detach().cpu().clone() for n, p in local.items()
        }
        torch.save(trainable, args.out / f"rank{rank}-{mode}.pt")
        report[mode] = {
            "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "loss": [r["loss"] for r in result.history],
            "grad_norm": [r["grad_norm"] for r in result.history],
            "label_tokens": [r["label_tokens"] for r in result.history],
            "checksum": float(sum(p.double().sum() for p in trainable.values())),
            "sharded": full is not None,
            "local_numel": sum(own_part(p).numel() for p in local.values()),
            "numel": sum(p.numel() for p in local.values()),
            "start_step": result.start_step,
        }
    (args.out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
