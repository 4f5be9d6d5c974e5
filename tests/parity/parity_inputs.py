"""The fixed inputs of the parity tests.

The golden values in ``test_parity_*.py`` were computed once by running the reference
implementations (open-unlearning, TOFU, MUSE, the Min-K% and Min-K%++ authors, the OPTML group,
TF-Privacy) on exactly these inputs. Everything here is a closed-form function of indices — no
random generator — so the arrays are the same on every machine and numpy version.
"""

from __future__ import annotations

import numpy as np

VOCAB = 11  # token ids 0..10; 0 pads, 1 is BOS, 10 is the EOS some references expect


def char_ids(text: str) -> list[int]:
    """A character-level toy tokenizer: BOS, then one id in 2..9 per character."""
    return [1] + [2 + ord(ch) % 8 for ch in text]


def logits_for(ids: list[int], shift: float = 0.0) -> np.ndarray:
    """(T, VOCAB) float32 next-token logits of a toy model; position t sees ids[t] and t only,
    so appending tokens does not change the earlier rows. ``shift`` makes a second model."""
    t = np.arange(len(ids), dtype=np.float64)[:, None]
    v = np.arange(VOCAB, dtype=np.float64)[None, :]
    x = np.asarray(ids, dtype=np.float64)[:, None]
    out = 2.5 * np.sin(0.37 * x * (v + 1) + 0.71 * t + shift) + np.cos(1.3 * v + 0.11 * x + shift)
    return out.astype(np.float32)


# Membership inference: "members" stand for the forget set, "nonmembers" for the holdout set.
MEMBERS = [
    "the river north of the city",
    "a doctor at the clinic",
    "mountains are green in may",
    "she wrote three books",
    "north wind over the harbour",
]
NONMEMBERS = [
    "the water was cold today",
    "a teacher lives south",
    "light travels fast",
    "red boats on the lake at dawn",
    "quiet streets after rain",
]
RETRAINED_SHIFT = 0.9  # the "retrained" model for PrivLeak: logits_for(ids, RETRAINED_SHIFT)


def grid(shape: tuple[int, ...], phase: float) -> np.ndarray:
    """A float32 array of the given shape filled by a fixed formula."""
    i = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return (3.0 * np.sin(0.7 * i + phase) + 0.5 * np.cos(1.3 * i)).astype(np.float32)


# Objectives: 3 sequences of 6 tokens, the last padded by 2; the first two tokens are the
# prompt (label -100). Forget and retain batches share the layout.
FORGET_IDS = [[1, 4, 7, 2, 9, 3], [1, 5, 5, 8, 2, 6], [1, 3, 9, 4, 0, 0]]
RETAIN_IDS = [[1, 2, 8, 8, 3, 5], [1, 6, 4, 9, 7, 2], [1, 9, 2, 5, 0, 0]]
ATTENTION = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
PROMPT_LENGTH = 2


def labels_of(ids: list[list[int]]) -> list[list[int]]:
    return [
        [
            -100 if j < PROMPT_LENGTH or not a else tok
            for j, (tok, a) in enumerate(zip(row, mask, strict=True))
        ]
        for row, mask in zip(ids, ATTENTION, strict=True)
    ]


FORGET_LOGITS_PHASE, FORGET_REFERENCE_PHASE, RETAIN_LOGITS_PHASE = 0.0, 0.4, 1.1
HIDDEN = 8  # RMU: hidden states (3, 6, 8), steering coefficient 4, u = normalized 1..8
STEERING = 4.0


def control_vector() -> np.ndarray:
    u = np.arange(1, HIDDEN + 1, dtype=np.float64)
    return (STEERING * u / np.linalg.norm(u)).astype(np.float32)


# Truth ratio: mean token NLL of the paraphrased answer and of 3 wrong answers per question, for
# an "unlearned" model and a retain-only reference model (12 forget questions each).
def truth_ratio_losses(phase: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(12, dtype=np.float64)
    paraphrase = 1.8 + 0.9 * np.sin(1.3 * i + phase)
    j = np.arange(3, dtype=np.float64)[None, :]
    wrong = 2.2 + spread * np.sin(0.8 * i[:, None] + 2.1 * j + phase) + 0.3 * np.cos(i)[:, None]
    return paraphrase, wrong


UNLEARNED = {"phase": 0.0, "spread": 1.6}  # wrong losses spread out: the two means disagree
RETRAINED = {"phase": 0.5, "spread": 0.3}


# ROUGE-L: (generation, ground truth) pairs with stemming, case, punctuation and digits.
ROUGE_PAIRS = [
    ("She was writing a book about rivers.", "She wrote books about the river."),
    ("The author was born in 1980 in Oslo", "The author was born in Oslo in 1980."),
    ("running, runs and ran", "He runs every morning"),
    ("", "Nothing was generated"),
    ("I don't know.", "The answer is Paris"),
    ("Paris is the capital of France. Paris!", "The capital of France is Paris"),
    ("caf\u00e9 owners studied economics", "The owners of the café study economic history"),
]


# Exposure: log-perplexities of 100 reference (non-inserted) secrets and of three canaries;
# the third equals a reference exactly (a tie).
EXPOSURE_REFERENCES = [
    float(60.0 + 4.0 * np.sin(0.9 * i) + 2.0 * np.cos(2.3 * i) + 0.05 * i) for i in range(100)
]
EXPOSURE_CANARIES = [52.0, 61.3, EXPOSURE_REFERENCES[7]]


# IdkDPO / IdkNLL: refusal answers to the forget questions (same 2 prompt tokens as FORGET_IDS,
# then an "I don't know" of 4, 3 and 2 tokens, EOS = 10), right-padded to 6.
IDK_IDS = [[1, 4, 6, 3, 2, 10], [1, 5, 6, 3, 10, 0], [1, 3, 6, 10, 0, 0]]
IDK_ATTENTION = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
IDK_LOGITS_PHASE, IDK_REFERENCE_PHASE = 2.3, 2.6


# TOFU model utility: per question of the retain (6), real authors (5) and world facts (5) sets,
# the mean token NLL of the answer, of its paraphrase (the answer itself on the real-world sets,
# as TOFU's base_answer_key) and of 3 wrong answers, and the ROUGE-L recall of an answer.
UTILITY_SETS = {"retain": (6, 0.3), "ra": (5, 1.2), "wf": (5, 2.0)}  # name: (questions, phase)


def utility_arrays(name: str) -> dict[str, np.ndarray]:
    n, phase = UTILITY_SETS[name]
    i = np.arange(n, dtype=np.float64)
    gt = 0.4 + 0.9 * np.sin(1.1 * i + phase) ** 2
    para = gt if name != "retain" else 0.7 + 0.8 * np.cos(0.9 * i + phase) ** 2
    j = np.arange(3, dtype=np.float64)[None, :]
    pert = 1.2 + 0.7 * np.sin(0.6 * i[:, None] + 1.7 * j + phase) ** 2
    rouge = 0.2 + 0.7 * np.cos(1.3 * i + phase) ** 2
    return {"gt": gt, "para": para, "pert": pert, "rouge": rouge}


# MUSE KnowMem: few-shot pairs, questions with their answers, and what a model generated (stop
# words and extra lines included, for the cut).
KNOWMEM_ICL = [("Who wrote the harbour report?", "Ann Lee"), ("Where is the clinic?", "Oslo")]
KNOWMEM_QA = [
    ("Where was Ann Lee born?", "Bergen", "Bergen, in 1950.\n\nQuestion: Who else?"),
    ("What does Bo do?", "He bakes bread", "Bo bakes bread\nQuestion: next"),
    ("Which city hosts the fair?", "The fair is in Paris", "Paris Question: x"),
    ("Who runs the mill?", "Cara runs it", "running mills is hard"),
]
