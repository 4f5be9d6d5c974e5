"""Typed examples, loaders, chat formatting with label masks, collators, synthetic data."""

from expunge.data.collator import collate
from expunge.data.examples import Example, Message
from expunge.data.formatting import (
    IGNORE_INDEX,
    FormatSettings,
    TokenizedExample,
    prompt_text,
    tokenize_example,
    tokenize_examples,
)
from expunge.data.loaders import load_examples, load_jsonl, write_jsonl

__all__ = [
    "IGNORE_INDEX", "Example", "FormatSettings", "Message", "TokenizedExample", "collate",
    "load_examples", "load_jsonl", "prompt_text", "tokenize_example", "tokenize_examples",
    "write_jsonl",
]  # fmt: skip
