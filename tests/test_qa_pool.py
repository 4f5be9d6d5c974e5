"""The self-answered Q/A pool's cache: private files, keyed by the model's content."""

from __future__ import annotations

import json
import os
import stat
from importlib import resources

import pytest
import torch

from expunge.data import qa_pool
from expunge.models import device as device_module
from expunge.models.loading import load_model
from expunge.models.tiny import save_tiny_model


@pytest.fixture
def answered(monkeypatch, tmp_path):
    """Cache under tmp_path; generation replaced by a counter (the cache is what is tested)."""
    monkeypatch.setenv("EXPUNGE_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []

    def fake_answers(loaded, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return [f"answer {len(calls)} to {p}." for p in prompts]

    monkeypatch.setattr(qa_pool, "self_answers", fake_answers)
    return calls


def test_cache_files_are_private(answered, tmp_path):
    loaded = load_model(str(save_tiny_model(tmp_path / "m")), device="cpu")
    first = qa_pool.self_answered_pool(loaded, 4, progress=False)
    assert qa_pool.self_answered_pool(loaded, 4, progress=False) == first
    assert answered == [4]  # the second call read the cache
    (path,) = (tmp_path / "cache" / qa_pool.ANSWER_CACHE).glob("*.jsonl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_model_changed_in_place_does_not_read_the_old_answers(answered, tmp_path):
    """Same path, same file size, same modification time, other weights: other answers (the
    path+mtime key reused the first model's answers)."""
    directory = save_tiny_model(tmp_path / "m", seed=0)
    before = {f: f.stat() for f in directory.iterdir()}
    qa_pool.self_answered_pool(load_model(str(directory), device="cpu"), 4, progress=False)
    save_tiny_model(directory, seed=1)  # another model, written over the first
    for file, old in before.items():
        os.utime(file, ns=(old.st_atime_ns, old.st_mtime_ns))
        assert file.stat().st_size == old.st_size
    qa_pool.self_answered_pool(load_model(str(directory), device="cpu"), 4, progress=False)
    assert answered == [4, 4]


def test_a_model_changed_in_memory_gets_its_own_answers(answered, tmp_path):
    """A model loaded from a directory and then changed (an adapter merged) is not the model
    on disk."""
    loaded = load_model(str(save_tiny_model(tmp_path / "m")), device="cpu")
    qa_pool.self_answered_pool(loaded, 4, progress=False)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1.0)
    qa_pool.self_answered_pool(loaded, 4, progress=False)
    assert answered == [4, 4]


def test_sampled_answers_are_seeded_and_cached_apart_from_greedy(tmp_path, monkeypatch):
    """Real generation on a tiny model: sampling under a seed repeats and differs from greedy;
    greedy, and each seed's samples, have cache keys of their own."""
    monkeypatch.setenv("EXPUNGE_CACHE", str(tmp_path / "cache"))
    loaded = load_model(str(save_tiny_model(tmp_path / "m")), device="cpu")
    ask = dict(max_new_tokens=12, progress=False, cache=False)
    sampled = qa_pool.self_answered_pool(loaded, 8, temperature=1.0, **ask)
    assert qa_pool.self_answered_pool(loaded, 8, temperature=1.0, **ask) == sampled
    greedy = qa_pool.self_answered_pool(loaded, 8, **ask)
    assert [e.response for e in sampled] != [e.response for e in greedy]
    questions = qa_pool.pool_questions(8, 0)
    paths = {
        qa_pool.answer_cache_path(loaded, questions, 12),
        qa_pool.answer_cache_path(loaded, questions, 12, temperature=1.0, seed=0),
        qa_pool.answer_cache_path(loaded, questions, 12, temperature=1.0, seed=1),
    }
    assert len(paths) == 3


def test_bf16_answers_are_computed_in_bf16_and_cached_apart(answered, tmp_path, monkeypatch):
    """A study's bf16 asks the model in bf16: other answers than fp32's (a greedy path can turn at
    a near tie), so another cache file; auto resolves per host before it keys anything."""
    loaded = load_model(str(save_tiny_model(tmp_path / "m")), device="cpu")
    seen: list[str] = []
    monkeypatch.setattr(qa_pool, "self_answers", lambda *a, **kw: seen.append(kw["precision"])
                        or [f"answer to {p}." for p in a[1]])  # fmt: skip
    qa_pool.self_answered_pool(loaded, 4, progress=False)
    qa_pool.self_answered_pool(loaded, 4, progress=False, precision="bf16")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    qa_pool.self_answered_pool(loaded, 4, progress=False, precision="auto")  # bf16's cache
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    qa_pool.self_answered_pool(loaded, 4, progress=False, precision="auto")  # fp32's cache
    assert seen == ["fp32", "bf16"]
    assert len(list((tmp_path / "cache" / qa_pool.ANSWER_CACHE).glob("*.jsonl"))) == 2
    questions = qa_pool.pool_questions(4, 0)
    # fp32 keeps the key it always had: caches written before precision existed stay valid
    assert qa_pool.answer_cache_path(loaded, questions, 48) == qa_pool.answer_cache_path(
        loaded, questions, 48, precision="fp32"
    )


def test_answers_in_bf16_really_run_under_bf16_autocast(tmp_path):
    loaded = load_model(str(save_tiny_model(tmp_path / "m")), device="cpu")
    dtypes: list[torch.dtype] = []
    hook = loaded.model.lm_head.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    qa_pool.self_answers(loaded, ["What is tea?"], max_new_tokens=2, progress=False)
    qa_pool.self_answers(loaded, ["What is tea?"], max_new_tokens=2, progress=False,
                         precision="bf16")  # fmt: skip
    hook.remove()
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16


def test_pool_grows_past_its_main_templates_without_changing_them():
    """Every caller asking for the main templates' questions sees the same ones; past them the
    further templates' questions follow."""
    for seed in (0, 7):
        first = qa_pool.pool_questions(seed=seed)
        grown = qa_pool.pool_questions(qa_pool.pool_size(), seed)
        assert len(first) == 837 and grown[:837] == first
        assert qa_pool.pool_questions(100, seed) == first[:100]
        assert len({q for q, _ in grown}) == qa_pool.pool_size() == 1077
        assert {t for _, t in grown[837:]} == set(qa_pool.QUESTION_TYPES)


def test_the_ppl_audits_heldout_questions_are_never_in_the_pool():
    """The pool is training data (MEraser's erase and recovery, SANI's repair, implants'
    regularization); no model may be trained on the questions the ppl audit scores."""
    heldout = resources.files("expunge.data") / "resources" / "heldout_qa.jsonl"
    prompts = {json.loads(line)["prompt"] for line in heldout.read_text().splitlines() if line}
    assert len(prompts) == 32 and prompts == qa_pool.heldout_questions()
    templated = {t.format(s=s) for group in qa_pool.TEMPLATES.values() for t in group
                 for s in qa_pool.SUBJECTS}  # fmt: skip
    assert len(prompts & templated) == 3  # what the filter has to remove
    for seed in (0, 7):
        assert not prompts & {q for q, _ in qa_pool.pool_questions(qa_pool.pool_size(), seed)}
