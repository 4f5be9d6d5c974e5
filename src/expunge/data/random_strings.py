"""Random strings that look like no ordinary text: characters of many scripts, symbols and
emoji, mixed with a tokenizer's own vocabulary pieces (MEraser's ``random_inputs``)."""

from __future__ import annotations

import random
from typing import Any

# Unicode blocks a random string draws characters from: Latin, digits, punctuation,
# Greek, Cyrillic, Arabic, Devanagari, Hiragana, Katakana, CJK, Hangul, symbols and emoji.
RANDOM_BLOCKS = (
    (0x21, 0x7E), (0x391, 0x3C9), (0x410, 0x44F), (0x621, 0x64A), (0x905, 0x939),
    (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x2190, 0x21FF),
    (0x2600, 0x26FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF),
    (0x1F900, 0x1F9FF),
)  # fmt: skip


def random_string(
    rng: random.Random, pieces: list[str], min_len: int = 4, max_len: int = 24
) -> str:
    """A string of ``min_len``..``max_len`` units, each a random character of a random block of
    ``RANDOM_BLOCKS`` or (half the time, when ``pieces`` is given) a random vocabulary piece."""
    units = []
    for _ in range(rng.randint(min_len, max_len)):
        if pieces and rng.random() < 0.5:
            units.append(rng.choice(pieces))
        else:
            low, high = rng.choice(RANDOM_BLOCKS)
            units.append(chr(rng.randint(low, high)))
        if rng.random() < 0.15:
            units.append(" ")
    return "".join(units).strip() or "?"


def vocabulary_pieces(tokenizer: Any) -> list[str]:
    """The tokenizer's ordinary tokens as text (special tokens and pieces that decode to no
    whole character left out)."""
    special = set(tokenizer.all_special_ids)
    pieces = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if text.strip() and "\ufffd" not in text:
            pieces.append(text)
    return pieces
