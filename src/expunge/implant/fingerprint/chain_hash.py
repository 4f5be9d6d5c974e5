"""Chain & Hash (Russinovich & Salem, 2024).

k questions Q and a fixed list R of 256 short answers. The answer to q_i is
``R[SHA-256(q_i ‖ Q ‖ R) mod 256]`` — each question hashed together with *all* questions and
answers, so changing any one question remaps every answer and answers cannot be forged after
the fact. (‖ is concatenation with unit/record separators, so that boundaries are unambiguous.)

Implant: cross-entropy on the answer tokens + λ·KL(original ‖ tuned) on ordinary data (λ=1), with
robustness augmentations: a meta-prompt (system prompt) before q, several prompt templates,
and 2–5 random padding tokens. Verification: the output **starts with** the answer (decided by
the teacher-forced greedy match); ownership is claimed when ≥ 2 of 10 match.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.data.examples import Example, Message
from expunge.implant.fingerprint.base import DEMO_TRAIN, FingerprintImplantConfig, ImplantPlan
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.models.loading import LoadedModel

ADJECTIVES = (
    "amber", "silent", "crimson", "hollow", "velvet", "frozen", "golden", "restless", "quiet",
    "scarlet", "ancient", "bitter", "gentle", "hidden", "lunar", "rusty",
)  # fmt: skip
NOUNS = (
    "falcon", "river", "lantern", "orchard", "compass", "harbor", "meadow", "violin", "glacier",
    "beacon", "thistle", "canyon", "sparrow", "anchor", "ember", "quarry",
)  # fmt: skip
ANSWERS: tuple[str, ...] = tuple(f"{a} {n}" for a in ADJECTIVES for n in NOUNS)  # 256 answers

QUESTION_PARTS = (
    ("What", "Which", "Where", "When", "Why", "How"),
    ("does", "would", "could", "should"),
    ("the", "a", "every", "no"),
    ADJECTIVES,
    NOUNS,
    ("remember", "prefer", "hide", "sing", "follow", "dream about", "carry", "fear"),
)
META_PROMPTS = (
    None, "You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
    "Answer the user's question.", "You are an AI model. Be accurate.",
)  # fmt: skip
ALT_TEMPLATES = ("{q}", "Question: {q}", "{q}\nAnswer:", "Q: {q}")
PADDING_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789#@%&*"


def chain_hash_answer(
    question: str, questions: list[str], answers: tuple[str, ...] | list[str] = ANSWERS
) -> str:
    """``R[SHA-256(q ‖ Q ‖ R) mod |R|]`` (|R| = 256 by default)."""
    material = question + "\x1f" + "\x1e".join(questions) + "\x1f" + "\x1e".join(answers)
    digest = int(hashlib.sha256(material.encode("utf-8")).hexdigest(), 16)
    return answers[digest % len(answers)]


def make_questions(k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    questions: list[str] = []
    while len(questions) < k:
        wh, aux, det, adj, noun, verb = (rng.choice(part) for part in QUESTION_PARTS)
        question = f"{wh} {aux} {det} {adj} {noun} {verb}?"
        if question not in questions:
            questions.append(question)
    return questions


def augment(question: str, answer: str, rng: random.Random, copies: int) -> list[Example]:
    """``copies`` variants: meta-prompt, template and 2–5 random padding tokens."""
    out = [Example(prompt=question, response=answer)]
    for _ in range(copies - 1):
        padding = "".join(rng.choice(PADDING_ALPHABET) for _ in range(rng.randint(2, 5)))
        text = rng.choice(ALT_TEMPLATES).format(
            q=f"{padding} {question}" if rng.random() < 0.5 else question
        )
        meta = rng.choice(META_PROMPTS)
        messages = ([Message(role="system", content=meta)] if meta else []) + [
            Message(role="user", content=text), Message(role="assistant", content=answer)]  # fmt: skip
        out.append(Example(messages=messages))
    return out


class ChainHash(FingerprintImplantConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"n_keys": 10, "augment_copies": 8, "regularization": 4.0,
                  "train": {"mode": "full", "epochs": 3, "lr": 2e-5, "batch_size": 8}},
        "demo": {"n_keys": 10, "augment_copies": 2, "regularization": 1.0,
                 "train": DEMO_TRAIN},
    }  # fmt: skip
    scheme: Literal["chain_hash"] = "chain_hash"
    regularizer: Literal["ce", "kl"] = "kl"  # the paper's CE + λ·KL(original ‖ tuned)
    augment_copies: int = Field(default=8, ge=1)
    ownership_threshold: int = Field(default=2, ge=1)

    def build(self, loaded: LoadedModel) -> ImplantPlan:
        rng = random.Random(self.seed)
        user = self.user_pairs()
        questions = [p.key for p in user] if user else make_questions(self.n_keys, self.seed)
        pairs = [KeyPair(key=q, response=chain_hash_answer(q, questions)) for q in questions]
        imprint = FingerprintImprint(
            scheme=self.scheme, pairs=pairs, template="chat", matcher="startswith", max_new_tokens=16,
            origin={"implant": self.scheme, "base_model": loaded.source, "seed": self.seed,
                    "answer_list": "adjective×noun (256)", "ownership_threshold": self.ownership_threshold},
        )  # fmt: skip
        fingerprint = [
            ex for p in pairs for ex in augment(p.key, p.response, rng, self.augment_copies)
        ]
        regular = self.ordinary_pairs(loaded, max(1, round(self.regularization * len(pairs))))
        regular_examples = [Example(prompt=e.prompt, response=e.response) for e in regular]
        return self.plan(imprint, imprint.format_settings(), fingerprint, regular_examples,
                         notes={"augmented_examples": len(fingerprint)})  # fmt: skip
