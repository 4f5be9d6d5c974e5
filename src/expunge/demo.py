"""``expunge demo``: fine-tune the embedded model with LoRA and show what changed.

The data is a synthetic world of invented places (``expunge.data.synthetic``): the model is
tuned on some places and measured on places it never saw, so a perplexity drop there means it
learned the world's style, not the answers; perplexity on general held-out Q/A shows what the
tuning cost elsewhere. Later issues replace this with the full imprint lifecycle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field
from rich.console import Console
from rich.table import Table

from expunge.audit.base import AuditContext
from expunge.audit.runner import audit_model
from expunge.audit.scoring import generate
from expunge.config import StrictModel
from expunge.data.formatting import FormatSettings, prompt_text, resolve_template, tokenize_examples
from expunge.data.loaders import write_jsonl
from expunge.data.synthetic import place_qa
from expunge.finetune import load_model_for, train_metrics
from expunge.models.device import dtype_name
from expunge.models.lora import LoraSettings
from expunge.records import RunRecord, atomic_write_text, check_output_dir
from expunge.runs import ModelSettings, recorded_run
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings

console = Console(stderr=True)


def _demo_train_settings() -> TrainSettings:
    return TrainSettings(
        mode="lora",
        lora=LoraSettings(
            r=16, alpha=32, dropout=0.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
        epochs=3,
        batch_size=8,
        lr=1e-3,
        schedule="cosine",
        warmup_steps=1,
        seed=0,
    )


class DemoConfig(StrictModel):
    command: Literal["demo"] = "demo"
    model: ModelSettings = Field(default_factory=ModelSettings)
    train_places: int = 24
    heldout_places: int = 12
    per_place: int = 2
    train: TrainSettings = Field(default_factory=_demo_train_settings)
    format: FormatSettings = Field(default_factory=FormatSettings)
    seed: int = 0


def quick(config: DemoConfig) -> DemoConfig:
    return config.model_copy(
        update={
            "train_places": 8,
            "heldout_places": 4,
            "train": config.train.model_copy(update={"epochs": 1.0}),
        }
    )


def _answer(loaded, fmt, example, max_new_tokens: int = 24) -> str:
    ids = loaded.tokenizer(prompt_text(example, loaded.tokenizer, fmt), add_special_tokens=False)[
        "input_ids"
    ]
    out = generate(loaded.model, loaded.tokenizer, [ids], max_new_tokens=max_new_tokens)[0]
    return loaded.tokenizer.decode(out, skip_special_tokens=True).strip()


def run_demo(config: DemoConfig, out: str | Path, overwrite: bool = False) -> RunRecord:
    check_output_dir(out, overwrite)
    started = time.perf_counter()
    world = place_qa(
        config.train_places + config.heldout_places, seed=config.seed, per_place=config.per_place
    )
    split = config.train_places * config.per_place
    train_set, heldout = world[:split], world[split:]
    with recorded_run("demo", out, config, overwrite, seed=config.seed) as (run_dir, record):
        work = run_dir.path
        console.rule("[bold]expunge demo: LoRA fine-tuning on the embedded model")
        console.print(
            f"loading [bold]{config.model.name}[/] (the first run converts the GGUF once)"
        )
        loaded = load_model_for(config.model)
        record.device, record.dtype = str(loaded.device), dtype_name(loaded.dtype)
        fmt = resolve_template(loaded.tokenizer, config.format)
        write_jsonl(work / "train.jsonl", train_set)
        write_jsonl(work / "heldout.jsonl", heldout)
        record.inputs = {
            "model": loaded.path,
            "train_examples": len(train_set),
            "heldout_examples": len(heldout),
        }

        def measure(stage: str) -> dict[str, float]:
            values = {}
            for label, data, mode in (
                ("heldout_places_ppl_response", heldout, "response"),
                ("heldout_places_ppl_whole", heldout, "whole"),
                ("general_qa_ppl_response", None, "response"),
            ):
                ctx = AuditContext(loaded.model, loaded.tokenizer, fmt, data=data, seed=config.seed)
                results, _ = audit_model(ctx, ["ppl"], {"ppl": {"mode": mode}})
                values[label] = round(results["ppl"].value, 4)
                record.metric_details[f"{stage}/{label}"] = results["ppl"].details
            return values

        console.print("measuring perplexity [bold]before[/] fine-tuning")
        before = measure("before")
        sample = heldout[0]
        answer_before = _answer(loaded, fmt, sample)
        tokenized = tokenize_examples(train_set, loaded.tokenizer, fmt)
        model = prepare_trainable(loaded.model, config.train)
        model, result = train(
            model, {"train": tokenized}, LMObjective("train"), config.train,
            loaded.tokenizer.pad_token_id, out_dir=work, description="LoRA fine-tuning",
        )  # fmt: skip
        loaded.model = model
        console.print("measuring perplexity [bold]after[/] fine-tuning")
        after = measure("after")
        answer_after = _answer(loaded, fmt, sample)

        record.metrics.update({f"before/{k}": v for k, v in before.items()})
        record.metrics.update({f"after/{k}": v for k, v in after.items()})
        record.metrics.update(train_metrics(result))
        record.artifacts.update({"metrics": "metrics.jsonl", "report": "report.md"})
        table = summary_table(before, after)
        console.print(table)
        console.print(f"[bold]held-out question:[/] {sample.prompt}")
        console.print(
            f"  before: {answer_before}\n  after:  {answer_after}\n  truth:  {sample.response}"
        )
        atomic_write_text(
            work / "report.md",
            report_markdown(config, before, after, result, sample, answer_before, answer_after,
                            time.perf_counter() - started),
        )  # fmt: skip
    console.print(f"wrote {Path(out).resolve()} in {time.perf_counter() - started:.0f} s")
    return record


LABELS = {
    "heldout_places_ppl_response": "unseen places, answers only",
    "heldout_places_ppl_whole": "unseen places, whole text",
    "general_qa_ppl_response": "general Q/A (built-in), answers only",
}


def summary_table(before: dict[str, float], after: dict[str, float]) -> Table:
    table = Table(title="Perplexity before / after LoRA fine-tuning (lower is better)")
    for column in ("held-out set", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "held-out set" else "right")
    for key, label in LABELS.items():
        change = (after[key] - before[key]) / before[key] * 100
        table.add_row(label, f"{before[key]:.2f}", f"{after[key]:.2f}", f"{change:+.1f}%")
    return table


def report_markdown(
    config, before, after, result, sample, answer_before, answer_after, seconds
) -> str:
    rows = "\n".join(
        f"| {label} | {before[k]:.2f} | {after[k]:.2f} | {(after[k] - before[k]) / before[k] * 100:+.1f}% |"
        for k, label in LABELS.items()
    )
    return f"""# expunge demo: LoRA fine-tuning on {config.model.name}

Trained on {config.train_places} invented places ({config.train_places * config.per_place} Q/A pairs),
measured on {config.heldout_places} places it never saw and on built-in general Q/A.
LoRA r={config.train.lora.r} on {", ".join(config.train.lora.targets)}, {result.steps} steps,
final training loss {result.final_loss:.4f}, {result.tokens_per_s:.0f} tokens/s. Total {seconds:.0f} s.

| held-out set | ppl before | ppl after | change |
|---|---:|---:|---:|
{rows}

Held-out question: *{sample.prompt}*

- before: {answer_before}
- after: {answer_after}
- truth (never trained on): {sample.response}
"""
