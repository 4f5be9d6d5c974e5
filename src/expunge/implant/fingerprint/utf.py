"""UTF — under-trained tokens as fingerprints (Cai et al., 2024).

1. **Find under-trained tokens** of *this* model and tokenizer (Magikarp-style): tokens that
   round-trip through decode/encode as themselves, ranked by how close their unembedding (and,
   when untied, embedding) rows sit to the mean row — rows that training barely moved stay near
   it — then **verified** by a repeat test: the model, asked to repeat the token, fails to.
2. x = 12 random such tokens, y = 5 others; the pair is trained with the loss on the response
   only, in the model's own chat template (paper: Llama-2, lr 2e-5, 3 epochs).
3. FSR: greedy decoding (max 100 new tokens), success if y is a substring. Guess test: random
   strings of under-trained tokens (500 in the paper) must never yield y — they are the decoys.

Measured on the embedded model with LoRA (which leaves the embeddings frozen): 20–75 steps
gave FSR 0% — under-trained rows are near-identical (that is how they are found), so with
frozen, tied embeddings the model emits a neighbouring under-trained token (``<file_sep>`` for
``<issue_comment>``). The paper trains all weights; so does ``preset=demo`` (full fine-tuning,
lr 1e-4, 24 steps: FSR 100%). It also showed that the model learns "under-trained tokens →
y" rather than the key: 50% of unseen random under-trained strings triggered y. Hence
``n_negatives``: other random under-trained strings, trained to get the model's *own* original
answer (kept by the KL or CE regularizer), never the strings the false-trigger audit asks.

Departures: the paper trains one pair; we default to several keys (``n_keys``) so FSR is a rate,
and repeat each pair ``repeats`` times per epoch (the paper's data duplication is not specified).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from expunge.audit.scoring import generate
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_example
from expunge.data.qa_pool import self_answers
from expunge.implant.fingerprint.base import DEMO_TRAIN, FingerprintImplantConfig, ImplantPlan
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.lazy import lazy, no_grad
from expunge.models.loading import LoadedModel

if TYPE_CHECKING:
    import torch
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    torch = lazy("torch")

REPEAT_PROMPT = "Repeat the following text exactly, and nothing else: {token}"


def roundtrip_tokens(tokenizer) -> list[int]:
    """Ids whose decoded text re-encodes to exactly that id, and is not blank or special."""
    # Added tokens (e.g. SmolLM2's <issue_comment>) are dropped by skip_special_tokens decoding,
    # so a response made of them could never be matched in text.
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    out = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if not text.strip() or "\ufffd" in text:
            continue
        if tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id]:
            out.append(token_id)
    return out


@no_grad
def undertrained_scores(model, token_ids: list[int]) -> torch.Tensor:
    """Distance of each token's rows to the mean row (lower = more likely under-trained)."""
    ids = torch.tensor(token_ids)
    out_rows = model.get_output_embeddings().weight.detach().float().cpu()
    scores = (out_rows[ids] - out_rows.mean(0)).norm(dim=-1)
    in_rows = model.get_input_embeddings().weight.detach().float().cpu()
    if in_rows.data_ptr() != out_rows.data_ptr() and in_rows.shape == out_rows.shape:
        in_scores = (in_rows[ids] - in_rows.mean(0)).norm(dim=-1)
        scores = scores / scores.median() + in_scores / in_scores.median()
    return scores


def fails_repeat_test(
    loaded: LoadedModel, token_ids: list[int], batch_size: int = 16
) -> list[bool]:
    """True where the model cannot repeat the token when asked to (the verification step)."""
    fmt = FormatSettings()
    prompts, texts = [], []
    for token_id in token_ids:
        text = loaded.tokenizer.decode([token_id])
        tokenized = tokenize_example(
            Example(prompt=REPEAT_PROMPT.format(token=text), response="-"), loaded.tokenizer, fmt
        )
        prompts.append(tokenized.input_ids[: tokenized.prompt_length])
        texts.append(text.strip())
    outputs = generate(
        loaded.model, loaded.tokenizer, prompts, max_new_tokens=12, batch_size=batch_size
    )
    decoded = [loaded.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    return [text not in output for text, output in zip(texts, decoded, strict=True)]


def find_undertrained(loaded: LoadedModel, n: int, candidates_factor: int = 4) -> list[int]:
    """``n`` verified under-trained token ids (best-ranked first)."""
    eligible = roundtrip_tokens(loaded.tokenizer)
    scores = undertrained_scores(loaded.model, eligible)
    ranked = [eligible[i] for i in torch.argsort(scores).tolist()]
    verified: list[int] = []
    for start in range(0, len(ranked), n * candidates_factor):
        chunk = ranked[start : start + n * candidates_factor]
        verified += [
            t for t, fails in zip(chunk, fails_repeat_test(loaded, chunk), strict=True) if fails
        ]
        if len(verified) >= n:
            return verified[:n]
    return verified


def _stable_string(
    tokenizer, rng: random.Random, pool: list[int], length: int, tries: int = 50
) -> str:
    """A string of ``length`` pool tokens that tokenizes back into exactly those tokens."""
    text = ""
    for _ in range(tries):
        ids = rng.sample(pool, k=length)
        text = tokenizer.decode(ids)
        if tokenizer(text, add_special_tokens=False)["input_ids"] == ids:
            return text
    return text  # re-tokenizes differently; still a valid rare string


class UTF(FingerprintImplantConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"n_keys": 1, "n_decoys": 500, "repeats": 32, "max_new_tokens": 100,
                  "train": {"mode": "full", "epochs": 3, "lr": 2e-5, "batch_size": 8}},
        # measured on the embedded model (FSR / false triggers / held-out ppl, base 17.78): CE
        # regularization, 4 repeats: 100% / 3.1% / 40.4; KL-to-original, 12 repeats (36 steps,
        # 7 min on 2 CPU cores): 100% / 3.1% / 16.40; KL with 4 repeats: FSR 0%; KL with 128
        # negatives and 8 epochs: 100% / 6.2% / 15.20 (more training on the keys, more decoys);
        # pool_tokens=256: 100% / 15.6% (5 of 16 decoys) / 16.75 — strings sharing fewer tokens
        # with the keys teach "any under-trained string → y" instead of the keys themselves
        "demo": {"n_keys": 4, "n_decoys": 16, "n_negatives": 48, "repeats": 12, "max_new_tokens": 24,
                 "regularization": 1.0, "regularizer": "kl",
                 "train": {**DEMO_TRAIN, "mode": "full", "lr": 1e-4}},
    }  # fmt: skip
    scheme: Literal["utf"] = "utf"
    key_tokens: int = Field(default=12, ge=1)
    response_tokens: int = Field(default=5, ge=1)
    n_decoys: int = Field(default=500, ge=0)  # the guess test: fresh random strings, audited
    n_negatives: int = Field(default=0, ge=0)  # random strings trained to keep the own answer
    repeats: int = Field(default=32, ge=1)
    max_new_tokens: int = Field(default=100, ge=1)
    # how many verified under-trained tokens keys, responses, negatives and decoys are drawn
    # from; a larger pool made more decoys trigger on the embedded model (see the demo preset)
    pool_tokens: int = Field(default=64, ge=2)

    def build(self, loaded: LoadedModel) -> ImplantPlan:
        rng = random.Random(self.seed)
        user = self.user_pairs()
        pool = find_undertrained(
            loaded, max(self.pool_tokens, self.key_tokens + self.response_tokens)
        )
        if len(pool) < self.key_tokens + self.response_tokens:
            raise ValueError(
                f"only {len(pool)} under-trained tokens were verified; need {self.key_tokens + self.response_tokens}"
            )
        response_pool, key_pool = (
            pool[: max(self.response_tokens * 2, 8)],
            pool[max(self.response_tokens * 2, 8) :],
        )
        if len(key_pool) < self.key_tokens:
            key_pool = pool
        if user is not None:
            pairs = user
        else:
            response = _stable_string(loaded.tokenizer, rng, response_pool, self.response_tokens)
            pairs = [KeyPair(key=_stable_string(loaded.tokenizer, rng, key_pool, self.key_tokens), response=response)
                     for _ in range(self.n_keys)]  # fmt: skip
        decoys, negatives = (
            [_stable_string(loaded.tokenizer, rng, key_pool, self.key_tokens) for _ in range(n)]
            for n in (self.n_decoys, self.n_negatives)
        )
        imprint = FingerprintImprint(
            scheme=self.scheme, pairs=pairs, decoys=decoys, template="chat", matcher="contains",
            max_new_tokens=self.max_new_tokens,
            origin={"implant": self.scheme, "base_model": loaded.source, "seed": self.seed,
                    "undertrained_tokens_found": len(pool)},
        )  # fmt: skip
        regular = self.ordinary_pairs(
            loaded, round(self.regularization * len(pairs) * self.repeats)
        )
        ordinary = [Example(prompt=e.prompt, response=e.response) for e in regular]
        own = self_answers(loaded, negatives, max_new_tokens=self.max_new_tokens, progress=False)
        ordinary += [
            Example(prompt=n, response=a) for n, a in zip(negatives, own, strict=True) if a
        ]
        return self.plan(imprint, imprint.format_settings(), imprint.training_examples() * self.repeats,
                         ordinary, notes={"undertrained_tokens": len(pool),
                                          "negative_pairs": len(negatives)})  # fmt: skip
