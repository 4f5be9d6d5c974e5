"""Where the time of a method goes, and its throughput: a slice of the real stage's training.

Each method is set up exactly as its stage sets it up (same config class, preset, data, format,
objective and train settings; the ``make demo`` sizes), then ``--steps`` optimizer steps of the
one training loop run after ``--warmup`` untimed ones:

- ``implant``: ``if_dialogue`` preset=demo with main.yaml's 4 keys, 4 negatives, batch 4
  (CE on the fingerprint stream + KL to the original on ordinary pairs);
- ``meraser_erase`` / ``meraser_recover``: MEraser preset=demo, n_erase=32 (main.yaml); the
  recovery is the distillation (KL to the model as given);
- ``npo``: the unlearn eraser preset=demo, NPO with its retain term, on the people world's
  forget/retain sets (unlearning.yaml's NPO-RT: lr 1e-3);
- ``audit``: ``fsr`` + ``false_trigger_rate`` + ``ppl`` under the default options, with an
  ``if_dialogue`` imprint of main.yaml's sizes (``--steps`` = repeats); ``--imprint`` and
  ``--metrics`` time other metrics (``--metrics forget_rouge_l --imprint KNOWLEDGE.json``).

``--profile`` splits every step into forward (with gradients), reference forward (forwards
under no_grad: the frozen model), backward, optimizer (AdamW, zero_grad, clipping), data
(sampling, collating) and the rest (loss arithmetic outside the model, Python); ``--ops`` adds
torch.profiler's top operators. ``--set KEY=VALUE`` overrides a field of the train settings
(``--set precision=bf16``) or of the method's config (``--set cfg.n_erase=16``); a field the
installed expunge does not have is an error, so one script times two versions of the library
side by side (run it with each version's ``src`` on PYTHONPATH).

    python benchmarks/bench_methods.py --method implant --steps 10 --profile
    python benchmarks/bench_methods.py --method npo --steps 10 --set precision=fp32

Prints one JSON line (the last line of output): tokens (non-padding), padded tokens, wall
seconds of the timed steps, tokens/s, examples/s, the losses, the peak resident memory after
loading the model (Linux: the high-water mark is reset once the model is loaded) and, with
``--profile``, the breakdown in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from typing import Any

import torch

from bench_memory import reset_peak_rss  # the scripts beside it are importable


def draw_step_name(loop: Any) -> str:
    """The loop's batch-drawing function: ``draw_step`` now, ``_draw_step`` in older versions."""
    return "draw_step" if hasattr(loop, "draw_step") else "_draw_step"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``KEY=VALUE`` pairs → (train settings overrides, config overrides)."""
    train_over, config_over = {}, {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.startswith("cfg."):
            config_over[key[4:]] = parse_value(value)
        else:
            train_over[key] = parse_value(value)
    return train_over, config_over


class Timers:
    """Seconds per category, filled by wrappers around the loop's pieces."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0

    @contextlib.contextmanager
    def time(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


def instrument(timers: Timers) -> None:
    """Wrap the loop's pieces (by name, so any version of the loop is timed the same way)."""
    import accelerate
    from transformers import LlamaForCausalLM
    from transformers.generation.utils import GenerationMixin

    import expunge.train.loop as loop

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)  # accelerate reads zero_grad's signature
        def wrapped(*args, **kwargs):
            with timers.time(label):
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    state = {"depth": 0, "generating": False}
    original_forward = LlamaForCausalLM.forward  # the embedded model is a Llama

    def forward(self, *args, **kwargs):
        # only the outermost call counts (a PEFT model calls the base model's inside its own)
        if state["depth"]:
            return original_forward(self, *args, **kwargs)
        if state["generating"]:
            label = "forward (in generate)"
        else:
            label = "forward" if torch.is_grad_enabled() else "reference / no-grad forward"
        state["depth"] += 1
        try:
            with timers.time(label):
                return original_forward(self, *args, **kwargs)
        finally:
            state["depth"] -= 1

    LlamaForCausalLM.forward = forward
    original_generate = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        state["generating"] = True
        try:
            with timers.time("generate (outside forward)"):
                return original_generate(self, *args, **kwargs)
        finally:
            state["generating"] = False

    GenerationMixin.generate = generate
    wrap(accelerate.Accelerator, "backward", "backward")
    wrap(accelerate.Accelerator, "clip_grad_norm_", "optimizer")
    wrap(torch.optim.AdamW, "step", "optimizer")
    wrap(torch.optim.AdamW, "zero_grad", "optimizer")
    wrap(loop, draw_step_name(loop), "data")


def load_base(model_name: str):
    from expunge.models.loading import load_model

    return load_model(model_name)


def implant_setup(loaded, train_over, config_over, seed):
    from expunge.implant.fingerprint.base import tokenize_checked
    from expunge.implant.fingerprint.instructional import IFDialogue

    config = IFDialogue.model_validate({
        "preset": "demo", "n_keys": 4, "n_negatives": 4, "n_decoys": 4, "seed": seed,
        "train": {"batch_size": 4, **train_over}, **config_over,
    })  # fmt: skip
    plan = config.build(loaded)
    streams = tokenize_checked(loaded, plan)
    return config.train, streams, plan.objective, None


def meraser_setup(phase: str):
    def setup(loaded, train_over, config_over, seed):
        from expunge.data.formatting import tokenize_examples
        from expunge.erase.fingerprint.meraser import MEraser, mismatch
        from expunge.train.kl import KLRetainObjective
        from expunge.train.objectives import LMObjective
        from expunge.train.reference import Reference

        config = MEraser.model_validate({
            "preset": "demo", "n_erase": 32, "seed": seed,
            phase: train_over, **config_over,
        })  # fmt: skip
        erase_pool, recover_pool = config.pool(loaded)
        if phase == "erase":
            data = tokenize_examples(mismatch(erase_pool, seed), loaded.tokenizer,
                                     config._format(""))  # fmt: skip
            return config.erase, {"train": data}, lambda model: LMObjective("train"), None
        data = tokenize_examples(recover_pool, loaded.tokenizer, config._format("\n"))
        teacher = Reference(loaded.model)  # the model as given, frozen before training
        return (config.recover, {"train": data},
                lambda model: KLRetainObjective(model, "train", teacher), None)  # fmt: skip

    return setup


def npo_setup(loaded, train_over, config_over, seed):
    from expunge.data.formatting import resolve_template, tokenize_examples
    from expunge.erase.unlearn.eraser import Unlearn
    from expunge.implant.knowledge import PeopleWorld

    world = PeopleWorld(seed=seed).world()
    config = Unlearn.model_validate({
        "preset": "demo", "objective": "npo", "npo": {"retain_weight": 1.0}, "seed": seed,
        "train": {"lr": 1e-3, "epochs": 10, **train_over}, **config_over,
    })  # fmt: skip
    fmt = resolve_template(loaded.tokenizer, world.format_settings())
    streams = {
        "forget": tokenize_examples(list(world.forget), loaded.tokenizer, fmt),
        "retain": tokenize_examples(list(world.retain), loaded.tokenizer, fmt),
    }
    return config.train, streams, config.build_objective, "forget"


SETUPS = {
    "implant": implant_setup,
    "meraser_erase": meraser_setup("erase"),
    "meraser_recover": meraser_setup("recover"),
    "npo": npo_setup,
}


def run_training(args, loaded, timers: Timers | None) -> dict[str, Any]:
    from expunge.train.loop import prepare_trainable, train

    train_over, config_over = overrides(args.set)
    settings, streams, make_objective, primary = SETUPS[args.method](
        loaded, train_over, config_over, args.seed
    )
    settings = settings.model_copy(
        update={"max_steps": args.warmup + args.steps, "progress": False, "save_every": None}
    )
    padded = {"tokens": 0, "padded": 0, "examples": 0}

    import expunge.train.loop as loop

    original_draw = getattr(loop, draw_step_name(loop))

    def counting_draw(*a, **k):
        micro = original_draw(*a, **k)
        if stamps:  # count only the timed steps
            for batches in micro:
                for batch in batches.values():
                    padded["padded"] += int(batch["input_ids"].numel())
                    padded["tokens"] += int(batch["attention_mask"].sum())
                    padded["examples"] += int(batch["input_ids"].shape[0])
        return micro

    setattr(loop, draw_step_name(loop), counting_draw)
    stamps: list[float] = []

    def on_step(step: int, record: dict) -> None:
        if step == args.warmup:
            stamps.append(time.perf_counter())
            if timers is not None:
                timers.seconds.clear()

    model = prepare_trainable(loaded.model, settings)
    objective = make_objective(model)
    profiler = _ops_profiler(args)
    started = time.perf_counter()
    if args.warmup == 0:
        stamps.append(started)
    with profiler:
        kwargs = {"primary_stream": primary} if primary else {}
        _, result = train(
            model, streams, objective, settings, loaded.tokenizer.pad_token_id,
            on_step=on_step, **kwargs,
        )  # fmt: skip
    wall = time.perf_counter() - stamps[0]
    losses = [r["loss"] for r in result.history]
    out = {
        "wall_s": round(wall, 3),
        "steps": args.steps,
        "s_per_step": round(wall / args.steps, 3),
        "tokens": padded["tokens"],
        "padded_tokens": padded["padded"],
        "padding_share": round(1 - padded["tokens"] / max(padded["padded"], 1), 3),
        "examples": padded["examples"],
        "tokens_per_s": round(padded["tokens"] / wall, 1),
        "examples_per_s": round(padded["examples"] / wall, 3),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "losses": [round(x, 5) for x in losses],
        "settings": {k: v for k, v in settings.model_dump(mode="json").items() if k != "lora"},
        "stream_sizes": {k: len(v) for k, v in streams.items()},
    }
    if timers is not None:
        out["breakdown_s"] = _breakdown(timers, wall)
    _print_ops(profiler, args)
    return out


def _breakdown(timers: Timers, wall: float) -> dict[str, float]:
    parts = dict(timers.seconds)
    inside = parts.get("forward (in generate)", 0.0)
    if "generate (outside forward)" in parts:  # generate's total holds its forwards
        parts["generate (outside forward)"] -= inside
    parts = {k: round(v, 3) for k, v in parts.items()}
    parts["other (loss math, Python)"] = round(wall - sum(timers.seconds.values()) + inside, 3)
    return parts


def _ops_profiler(args):
    if not args.ops:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU])


def _print_ops(profiler, args) -> None:
    if args.ops and profiler is not None and hasattr(profiler, "key_averages"):
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25),
              file=sys.stderr)  # fmt: skip


def run_audit(args, loaded, timers: Timers | None) -> dict[str, Any]:
    from expunge.audit.base import AuditContext
    from expunge.audit.defaults import default_options
    from expunge.audit.runner import audit_model
    from expunge.implant.fingerprint.instructional import IFDialogue
    from expunge.imprints.base import load_imprint

    _, config_over = overrides(args.set)
    audit_over = {k[6:]: v for k, v in config_over.items() if k.startswith("audit.")}
    if args.imprint:
        imprint = load_imprint(args.imprint)
    else:
        config = IFDialogue.model_validate(
            {"preset": "demo", "n_keys": 4, "n_negatives": 4, "n_decoys": 4, "seed": args.seed}
        )
        imprint = config.build(loaded).imprint
    metrics = args.metrics
    counted = {"tokens": 0}
    _count_model_tokens(counted)

    def fresh_context() -> AuditContext:  # metrics cache generations per context
        return AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(),
                            imprint=imprint, progress=False, **audit_over)  # fmt: skip

    for _ in range(args.warmup):
        audit_model(fresh_context(), metrics, default_options(metrics))
    counted["tokens"] = 0
    if timers is not None:
        timers.seconds.clear()
    started = time.perf_counter()
    per_metric: dict[str, float] = defaultdict(float)
    profiler = _ops_profiler(args)
    with profiler:
        for _ in range(args.steps):
            results, timings = audit_model(fresh_context(), metrics, default_options(metrics))
            for k, v in timings.items():
                per_metric[k] += v
    wall = time.perf_counter() - started
    out = {
        "wall_s": round(wall, 3),
        "repeats": args.steps,
        "tokens": counted["tokens"],
        "tokens_per_s": round(counted["tokens"] / wall, 1),
        "metrics": {k: r.value for k, r in results.items()},
        "metric_s": {k: round(v, 3) for k, v in per_metric.items()},
    }
    if timers is not None:
        out["breakdown_s"] = _breakdown(timers, wall)
    _print_ops(profiler, args)
    return out


def _count_model_tokens(counted: dict[str, int]) -> None:
    """Count the tokens every outermost model call processes (generation steps included)."""
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.forward

    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            counted["tokens"] += int(ids.numel())
        return original(self, *args, **kwargs)

    LlamaForCausalLM.forward = forward


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=[*SETUPS, "audit"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--ops", action="store_true", help="torch.profiler's top operators")
    parser.add_argument("--imprint", help="audit: this imprint (default: one built like main.yaml)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["fsr", "false_trigger_rate", "ppl"],
        help="audit: the metrics to time (the imprint must have their kind)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    loaded = load_base(args.model)
    rss_loaded = _rss_mib()
    reset = reset_peak_rss()  # the peak below is then the method's, not the loading's
    timers = Timers() if args.profile else None
    if timers is not None:
        instrument(timers)
    runner = run_audit if args.method == "audit" else run_training
    out = runner(args, loaded, timers)
    import expunge

    out = {
        "method": args.method, "set": args.set, "expunge": os.path.dirname(expunge.__file__),
        "threads": torch.get_num_threads(), "load": round(os.getloadavg()[0], 2), **out,
        "rss_loaded_mib": round(rss_loaded), "peak_rss_mib": round(_peak_rss_mib()),
        "peak_is_after_load": reset,
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
