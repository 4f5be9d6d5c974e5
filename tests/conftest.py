"""Generic shared fixtures: tiny in-process models and their tokenizer."""

from __future__ import annotations

import pytest
import torch

from expunge.models.tiny import ARCHITECTURES, tiny_model, tiny_tokenizer

# Tiny models gain nothing from intra-op threads, and on a small shared CPU the thread pool's
# spinning makes each matmul ~100x slower when other processes compete for the cores.
torch.set_num_threads(1)


@pytest.fixture
def tiny(request):
    """A fresh ``(model, tokenizer)`` pair; parametrize with ``indirect=True`` to pick the arch.

    ``@pytest.mark.parametrize("tiny", ["llama", "gpt2"], indirect=True)``; default: llama.
    """
    arch = getattr(request, "param", "llama")
    assert arch in ARCHITECTURES
    return tiny_model(arch, seed=0)


@pytest.fixture
def tokenizer():
    """The tiny byte-level BPE tokenizer with a ChatML template (a fresh object each test)."""
    return tiny_tokenizer()
