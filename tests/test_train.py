"""The training loop on tiny random models: learning, determinism, accumulation, resume, scope.

Every run is a few steps of a 2-layer model on CPU, so the whole file takes seconds. The data
has responses of very different lengths, so a loss averaged per micro-batch (instead of over the
label tokens of the whole step) would give visibly different parameters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from expunge.data import Example, FormatSettings, tokenize_examples
from expunge.data.formatting import IGNORE_INDEX
from expunge.data.synthetic import place_qa
from expunge.errors import ConfigError, DataError
from expunge.models.lora import LoraSettings
from expunge.models.tiny import tiny_model
from expunge.train import LMObjective, StepContext, TrainSettings, prepare_trainable, train
from expunge.train.loop import StreamSampler
from expunge.train.objectives import token_nll


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the threads' spin
    waits make each step tens of times slower; restore the setting for the other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def varied_examples(n_places: int = 6, seed: int = 0) -> list[Example]:
    """Place Q/A whose responses repeat 1-4 times: label counts differ up to ~4x per example."""
    return [
        Example(prompt=e.prompt, response=" ".join([e.response] * (1 + i % 4)))
        for i, e in enumerate(place_qa(n_places, seed=seed))
    ]


def label_count(example) -> int:
    """Label tokens that are predicted (the first position never is): what the loss sums over."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def settings(**overrides) -> TrainSettings:
    base = {
        "mode": "full",
        "max_steps": 4,
        "batch_size": 4,
        "lr": 3e-3,
        "progress": False,
        "lora": LoraSettings(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"]),
        # the loop's arithmetic is checked exactly in fp32 (bf16 rounds differently per shape)
        "precision": "fp32",
    }
    return TrainSettings(**{**base, **overrides})


def run(
    train_settings: TrainSettings,
    arch: str = "llama",
    data=None,
    objective=None,
    streams=None,
    **kwargs,
):
    """Build a fresh tiny model (seed 0), prepare it and train; returns (model, result, tok)."""
    model, tok = tiny_model(arch, seed=0)
    model = prepare_trainable(model, train_settings)
    if streams is None:
        data = (
            data
            if data is not None
            else tokenize_examples(varied_examples(), tok, FormatSettings())
        )
        streams = {"train": data}
    model, result = train(
        model, streams, objective or LMObjective(), train_settings, tok.pad_token_id, **kwargs
    )
    return model, result, tok


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@torch.no_grad()
def mean_nll(model, data, pad_token_id: int) -> float:
    """Token-mean NLL of ``data`` (one batch), independent of the training loop."""
    from expunge.data import collate

    batch = collate(data, pad_token_id)
    nll, mask = token_nll(model, batch)
    return float(nll.sum() / mask.sum())


# -- learning -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, lr", [("full", 3e-3), ("lora", 2e-2)], ids=["full", "lora"]
)  # fmt: skip
def test_loss_decreases(mode: str, lr: float) -> None:
    model, tok = tiny_model("llama", seed=0)
    data = tokenize_examples(varied_examples(), tok, FormatSettings())
    before = mean_nll(model, data, tok.pad_token_id)
    lora = LoraSettings(r=8, alpha=16, dropout=0.0, targets=["all-linear"])
    train_settings = settings(mode=mode, lr=lr, max_steps=15, lora=lora)
    model = prepare_trainable(model, train_settings)
    model, result = train(model, {"train": data}, LMObjective(), train_settings, tok.pad_token_id)
    after = mean_nll(model, data, tok.pad_token_id)

    assert result.steps == 15 and len(result.history) == 15
    assert after < before - 0.5, (before, after)
    losses = [record["loss"] for record in result.history]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    assert all(np.isfinite(losses))


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run() -> None:
    # LoRA with dropout: the seed drives both the data order and the dropout masks.
    lora = LoraSettings(r=4, alpha=8, dropout=0.1, targets=["q_proj", "v_proj"])
    make = lambda seed: settings(mode="lora", lora=lora, seed=seed, lr=1e-2)  # noqa: E731
    model_a, result_a, _ = run(make(0))
    model_b, result_b, _ = run(make(0))
    model_c, result_c, _ = run(make(1))

    curve = lambda result: [(r["loss"], r["lr"], r["grad_norm"]) for r in result.history]  # noqa: E731
    assert curve(result_a) == curve(result_b)
    state_a, state_b = params(model_a), params(model_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert [r["loss"] for r in result_c.history] != [r["loss"] for r in result_a.history]
    assert max_diff(state_a, params(model_c)) > 0


# -- gradient accumulation ------------------------------------------------------------------------


class PerMicroBatchMean:
    """The naive loss: mean over each micro-batch's own tokens, averaged over micro-batches."""

    streams = ("train",)

    def __init__(self, grad_accum: int) -> None:
        self.grad_accum = grad_accum

    def __call__(self, model, batches, ctx: StepContext):
        nll, mask = token_nll(model, batches["train"])
        loss = nll.sum() / mask.sum() / self.grad_accum
        return loss, {}


def test_grad_accum_reproduces_one_big_batch() -> None:
    _, tok = tiny_model("llama", seed=0)
    data = tokenize_examples(varied_examples(), tok, FormatSettings())
    counts = {label_count(e) for e in data}
    assert max(counts) > 2 * min(counts), "the test needs examples of very different lengths"

    runs = {}
    for batch_size, grad_accum in [(8, 1), (4, 2), (2, 4)]:
        model, result, _ = run(
            settings(batch_size=batch_size, grad_accum=grad_accum, max_steps=3), data=data
        )
        runs[batch_size] = (params(model), [r["loss"] for r in result.history], result.history)

    reference, ref_losses, ref_history = runs[8]
    for batch_size in (4, 2):
        state, losses, history = runs[batch_size]
        assert max_diff(state, reference) < 1e-5, batch_size
        np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
        assert [r["label_tokens"] for r in history] == [r["label_tokens"] for r in ref_history]

    # The same split with a per-micro-batch mean moves the weights differently: the test above
    # would notice a loop that normalized per micro-batch.
    naive = {}
    for batch_size, grad_accum in [(8, 1), (2, 4)]:
        model, _, _ = run(
            settings(batch_size=batch_size, grad_accum=grad_accum, max_steps=3),
            data=data,
            objective=PerMicroBatchMean(grad_accum),
        )
        naive[batch_size] = params(model)
    assert max_diff(naive[8], reference) < 1e-5  # one micro-batch: both losses agree
    assert max_diff(naive[2], naive[8]) > 1e-4


# -- checkpoints and resume -----------------------------------------------------------------------


class Interrupt(RuntimeError):
    pass


def stop_at(step_to_stop: int):
    def on_step(step: int, record: dict) -> None:
        if step == step_to_stop:
            raise Interrupt(f"stopped at step {step}")

    return on_step


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "mode, stop",
    # Stopping right after the checkpoint, and two steps past it (steps 4-5 of metrics.jsonl
    # must then be dropped and recomputed on resume).
    [("lora", 3), ("full", 5)],
    ids=["lora-stop-at-checkpoint", "full-stop-past-checkpoint"],
)
def test_resume_continues_the_same_curve(tmp_path, mode: str, stop: int) -> None:
    # Cosine schedule with warmup, clipping, and (LoRA) dropout: the schedule position, the
    # optimizer moments, the RNG and the sampler positions must all come back.
    lora = LoraSettings(r=4, alpha=8, dropout=0.1, targets=["q_proj", "v_proj"])
    train_settings = settings(
        mode=mode, lora=lora, max_steps=8, save_every=3, schedule="cosine", warmup_steps=2,
        lr=1e-2, max_grad_norm=0.5, batch_size=3, grad_accum=2,
    )  # fmt: skip
    full_model, full_result, _ = run(train_settings, out_dir=tmp_path / "a")

    with pytest.raises(Interrupt):
        run(train_settings, out_dir=tmp_path / "b", on_step=stop_at(stop))
    assert (tmp_path / "b" / "checkpoints" / "step-0000003").is_dir()
    assert [r["step"] for r in metrics(tmp_path / "b" / "metrics.jsonl")] == list(
        range(1, stop + 1)
    )
    resumed_model, resumed_result, _ = run(train_settings, out_dir=tmp_path / "b", resume=True)

    assert resumed_result.steps == 5
    assert [r["step"] for r in resumed_result.history] == [4, 5, 6, 7, 8]
    for mine, theirs in zip(resumed_result.history, full_result.history[3:], strict=True):
        assert mine["step"] == theirs["step"]
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert mine["lr"] == pytest.approx(theirs["lr"], abs=1e-12)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], abs=1e-5)
        assert mine["epoch"] == theirs["epoch"]

    curve_a = metrics(tmp_path / "a" / "metrics.jsonl")
    curve_b = metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in curve_b] == list(range(1, 9))  # no duplicates, no gaps
    for mine, theirs in zip(curve_b, curve_a, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert mine["lr"] == pytest.approx(theirs["lr"], abs=1e-12)
    assert max(r["lr"] for r in curve_a) == pytest.approx(1e-2)  # warmup reached the peak
    assert max_diff(params(resumed_model), params(full_model)) < 1e-6
    # keep_checkpoints=1: only the newest checkpoint (step 6) is left.
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000006"]


def test_resume_without_checkpoint_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        run(settings(max_steps=2), out_dir=tmp_path, resume=True)


# -- what trains ----------------------------------------------------------------------------------


def test_lora_changes_only_adapter_weights() -> None:
    model, tok = tiny_model("llama", seed=0)
    train_settings = settings(mode="lora", lr=1e-2, max_steps=3)
    model = prepare_trainable(model, train_settings)
    before = params(model)
    data = tokenize_examples(varied_examples(), tok, FormatSettings())
    model, _ = train(model, {"train": data}, LMObjective(), train_settings, tok.pad_token_id)
    after = params(model)

    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lora_names = {k for k in before if "lora_" in k}
    assert len(lora_names) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert changed == lora_names


@pytest.mark.parametrize(
    "patterns, expected",
    [
        (["mlp.down_proj"], r"model\.layers\.\d\.mlp\.down_proj\.weight"),
        ([r"re:model\.layers\.1\.self_attn\.(q|k)_proj\.weight"], r"model\.layers\.1\.self_attn\.[qk]_proj\.weight"),
        (["self_attn.o_proj", "lm_head"], r"(model\.layers\.\d\.self_attn\.o_proj|lm_head)\.weight"),
    ],
    ids=["module-suffix", "regex", "two-patterns"],
)  # fmt: skip
def test_full_mode_trains_exactly_the_chosen_tensors(patterns: list[str], expected: str) -> None:
    import re

    model, tok = tiny_model("llama", seed=0)
    train_settings = settings(mode="full", trainable=patterns, max_steps=3)
    model = prepare_trainable(model, train_settings)
    before = params(model)
    wanted = {k for k in before if re.fullmatch(expected, k)}
    assert wanted and {k for k, p in model.named_parameters() if p.requires_grad} == wanted
    data = tokenize_examples(varied_examples(), tok, FormatSettings())
    model, _ = train(model, {"train": data}, LMObjective(), train_settings, tok.pad_token_id)
    after = params(model)

    assert {k for k in before if not torch.equal(before[k], after[k])} == wanted


# -- sampling -------------------------------------------------------------------------------------


def test_stream_sampler_epochs_are_permutations_and_resume_exactly() -> None:
    size = 7
    sampler = StreamSampler(size, seed=3, salt=0)
    walk = sampler.take(size * 4)
    epochs = [walk[i * size : (i + 1) * size] for i in range(4)]
    assert all(sorted(epoch) == list(range(size)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # a fresh order each epoch

    # Taking in odd chunks, or restarting from the consumed count, walks the same sequence.
    chunked = StreamSampler(size, seed=3, salt=0)
    assert chunked.take(3) + chunked.take(5) + chunked.take(20) == walk
    for position in (0, 5, 7, 13):
        resumed = StreamSampler(size, seed=3, salt=0)
        resumed.consumed = position
        assert resumed.take(size * 4 - position) == walk[position:]

    assert StreamSampler(size, seed=4, salt=0).take(size * 2) != walk[: size * 2]
    assert StreamSampler(size, seed=3, salt=1).take(size * 2) != walk[: size * 2]


# -- two streams ----------------------------------------------------------------------------------


class TwoStreamProbe:
    """Descend on retain, ascend (gently) on forget; record what ctx says and what it saw."""

    streams = ("forget", "retain")

    def __init__(self) -> None:
        self.contexts: dict[int, StepContext] = {}
        self.seen: dict[int, dict[str, list[int]]] = {}

    def __call__(self, model, batches, ctx: StepContext):
        self.contexts[ctx.step] = ctx
        seen = self.seen.setdefault(ctx.step, {"forget": [0, 0], "retain": [0, 0]})
        for name in self.streams:
            labels = batches[name]["labels"]
            seen[name][0] += int((labels[:, 1:] != IGNORE_INDEX).sum())
            seen[name][1] += labels.shape[0]
        forget, _ = token_nll(model, batches["forget"])
        retain, _ = token_nll(model, batches["retain"])
        loss = ctx.mean_over_tokens("retain", retain.sum()) - 0.1 * ctx.mean_over_tokens(
            "forget", forget.sum()
        )
        return loss, {"forget_nll": ctx.mean_over_tokens("forget", forget.sum()).detach()}


def test_two_streams_get_global_token_and_sequence_counts() -> None:
    _, tok = tiny_model("llama", seed=0)
    forget = tokenize_examples(varied_examples(2, seed=1), tok, FormatSettings())  # 4 examples
    retain = tokenize_examples(varied_examples(5, seed=2), tok, FormatSettings())  # 10 examples
    probe = TwoStreamProbe()
    train_settings = settings(batch_size=3, grad_accum=2, max_steps=5, seed=7)
    _, result, _ = run(
        train_settings, streams={"forget": forget, "retain": retain}, objective=probe,
        primary_stream="retain",
    )  # fmt: skip

    # The examples each step should draw, from the sampler walk (salt = stream position).
    per_step = train_settings.batch_size * train_settings.grad_accum
    walks = {
        name: StreamSampler(len(data), seed=7, salt=index).take(per_step * 5)
        for index, (name, data) in enumerate([("forget", forget), ("retain", retain)])
    }
    assert sorted(probe.contexts) == [0, 1, 2, 3, 4]
    for step, ctx in probe.contexts.items():
        for name, data in (("forget", forget), ("retain", retain)):
            drawn = walks[name][step * per_step : (step + 1) * per_step]
            assert ctx.tokens[name] == sum(label_count(data[i]) for i in drawn)
            assert ctx.sequences[name] == per_step
            assert probe.seen[step][name] == [ctx.tokens[name], ctx.sequences[name]]
        assert ctx.world_size == 1
        assert result.history[step]["label_tokens"] == ctx.tokens["forget"] + ctx.tokens["retain"]
    assert ctx.tokens["forget"] != ctx.tokens["retain"]
    assert all("forget_nll" in record for record in result.history)
    # The epoch counter follows the primary stream (retain: 10 examples, 6 drawn per step).
    assert result.history[-1]["epoch"] == pytest.approx(30 / 10)


# -- errors ---------------------------------------------------------------------------------------


def test_empty_stream_is_a_data_error() -> None:
    with pytest.raises(DataError, match="empty"):
        run(settings(), streams={"train": []})


def test_objective_needing_a_missing_stream_is_a_config_error() -> None:
    _, tok = tiny_model("llama", seed=0)
    data = tokenize_examples(varied_examples(2), tok, FormatSettings())
    with pytest.raises(ConfigError, match="retain"):
        run(settings(), streams={"forget": data}, objective=TwoStreamProbe())


def test_unknown_primary_stream_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="primary stream"):
        run(settings(), primary_stream="nope")


def test_no_trainable_parameters_is_a_config_error() -> None:
    model, tok = tiny_model("llama", seed=0)
    for param in model.parameters():
        param.requires_grad_(False)
    data = tokenize_examples(varied_examples(2), tok, FormatSettings())
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train(model, {"train": data}, LMObjective(), settings(), tok.pad_token_id)


# -- experiment tracking --------------------------------------------------------------------------


def test_report_to_tensorboard_logs_the_metrics_curve(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(settings(max_steps=5, report_to="tensorboard"), out_dir=tmp_path)
    curve = metrics(tmp_path / "metrics.jsonl")
    (events,) = (tmp_path / "tracking").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(accumulator.Tags()["scalars"])
    for tag in ("loss", "lr", "grad_norm"):
        scalars = accumulator.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in curve] == [1, 2, 3, 4, 5]
        # TensorBoard stores float32
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in curve], rel=1e-6)


def test_report_to_is_off_by_default_and_a_missing_tracker_is_one_line(
    tmp_path, monkeypatch
) -> None:
    import importlib.util

    from expunge.config import build_config
    from expunge.finetune import FinetuneConfig

    run(settings(max_steps=1), out_dir=tmp_path)
    assert not (tmp_path / "tracking").exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a)
    )
    with pytest.raises(ConfigError) as err:
        build_config(FinetuneConfig, {}, ["train.report_to=wandb"])
    assert "train.report_to: wandb is not installed: pip install 'expunge[wandb]'" in str(err.value)
    with pytest.raises(ConfigError, match="needs a run directory"):
        run(settings(max_steps=1, report_to="tensorboard"))


def test_progress_in_a_log_is_plain_lines_at_every_tenth(capsys, monkeypatch):
    """Off a terminal (a batch job's output file) the bar would be drawn once, at the end: the
    steps are said as lines instead, with the time left, from where a resumed run started."""
    import expunge.train.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    with progress.TrainProgress(total=40, start=10, description="MEraser erase") as bar:
        assert bar.plain
        for step in range(11, 41):
            now[0] = 3.0 * (step - 10)  # 3 s a step
            bar.update(step, {"loss": 1.0 / step, "tokens_per_s": 120.0})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" · ")[0] for line in lines] == [
        "MEraser erase 14/40", "MEraser erase 18/40", "MEraser erase 22/40",
        "MEraser erase 26/40", "MEraser erase 30/40", "MEraser erase 34/40",
        "MEraser erase 38/40", "MEraser erase 40/40",
    ]  # fmt: skip
    # at step 14, 4 steps in 12 s leave 26 steps: 78 s
    assert lines[0] == (
        "MEraser erase 14/40 · loss 0.0714 · 120 tok/s · 0:00:12 elapsed, ~0:01:18 left"
    )
    assert lines[-1].endswith("~0:00:00 left")


def test_a_long_scoring_loop_in_a_log_says_where_it_is_once_a_minute(capsys, monkeypatch):
    import expunge.train.progress as progress

    clock = iter([0.0, 20.0, 61.0, 90.0, 130.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    assert list(progress.track(range(4), "generating", total=4)) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["generating 2/4 · 0:01:01 elapsed, ~0:01:01 left",
                     "generating 4/4 · 0:02:10 elapsed, ~0:00:00 left"]  # fmt: skip
    assert list(progress.track(range(3), "quiet", enabled=False)) == [0, 1, 2]
