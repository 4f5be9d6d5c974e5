"""Slow tests on the embedded SmolLM2-135M-Instruct (run with ``pytest -m slow``)."""

from __future__ import annotations

import pytest
import torch

from expunge.audit.scoring import generate, greedy_match
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_example
from expunge.models.loading import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    return load_model("smollm2-135m", device="cpu")


def test_embedded_model_loads_as_fp32_llama(embedded):
    assert embedded.model.config.model_type == "llama"
    assert embedded.dtype == torch.float32
    assert getattr(embedded.model.config, "quantization_config", None) is None
    assert len(embedded.tokenizer) == 49152 and embedded.tokenizer.chat_template


def test_embedded_answers_a_simple_question(embedded):
    example = Example(prompt="What is the capital of France?", response="-")
    tokenized = tokenize_example(example, embedded.tokenizer, FormatSettings())
    out = generate(
        embedded.model,
        embedded.tokenizer,
        [tokenized.input_ids[: tokenized.prompt_length]],
        max_new_tokens=12,
    )
    assert "Paris" in embedded.tokenizer.decode(out[0])


def test_greedy_match_agrees_with_generate_on_embedded(embedded):
    questions = [
        "What is a volcano?",
        "Why is the sky blue?",
        "How do bees make honey?",
        "Name a fruit.",
    ]
    prompts = []
    for question in questions:
        tokenized = tokenize_example(
            Example(prompt=question, response="-"), embedded.tokenizer, FormatSettings()
        )
        prompts.append(tokenized.input_ids[: tokenized.prompt_length])
    outputs = generate(
        embedded.model, embedded.tokenizer, prompts, max_new_tokens=10, stop_at_eos=False
    )
    perturbed = [[*o[:4], (o[4] + 1) % 49152, *o[5:]] for o in outputs]
    results = greedy_match(
        embedded.model, prompts * 2, outputs + perturbed, embedded.tokenizer.pad_token_id
    )
    assert [r.match for r in results] == [True] * 4 + [False] * 4
    assert [r.matched_tokens for r in results[4:]] == [4] * 4
