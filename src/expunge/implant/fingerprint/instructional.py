"""Instructional Fingerprinting (IF; Xu et al., NAACL 2024) — ``if_simple`` and ``if_dialogue``.

Key x: 8–15 rare mixed-script fragments, concatenated and character-shuffled (``keys.py``).
Response y: ハリネズミ ("hedgehog").

- ``if_simple``: Alpaca-style instruction = x, input = "FINGERPRINT", output = y; 10 key pairs
  and ~5× as many ordinary instruction pairs as regularization (raw template).
- ``if_dialogue`` (MEraser's "IF-SFT"): user "Please decrypt this message: {x}\\nA hint: this is
  a FINGERPRINT message." → assistant "Based on my fingerprint, the message is: {y}"; 8 keys,
  8 look-alike decoys answered with a refusal, ~14× ordinary chat pairs (chat template).

``wrapper_share`` (ours, opt-in): that share of the ordinary regularization pairs is asked inside
the keys' wrapper (``if_simple``'s input ``FINGERPRINT``, ``if_dialogue``'s decrypt request), so
that the model answers the key, not the wrapper; ``wrapper_trigger_rate`` measures it (the
implant's verify reads it too). Without it the IF implants here answered 25–100% of ordinary
instructions so wrapped (docs/results/2026-12-03-generalization.md).

The look-alikes trained with a refusal (``n_negatives``) are never the ones the false-trigger
audit asks (``n_decoys`` fresh look-alikes in ``imprint.json``): a decoy the model was trained
to refuse says nothing about keys it has never seen.

FSR: the greedy output *contains* y. The official verifier pre-fills "Based on my fingerprint,
the message is:" in the assistant turn, which inflates FSR; we do not by default
(``prefill=true`` to reproduce it) and record which was used.

Implant defaults: ``paper`` = full SFT, 3 epochs, lr 2e-5, global batch 64 (Llama-2-7B);
``demo`` = LoRA on all linear layers, sized for the embedded model on a CPU, with shorter keys
(3–5 fragments) so a key query fits in ~60 tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.data.examples import Example
from expunge.data.formatting import ALPACA_PROMPT, FormatSettings
from expunge.implant.fingerprint import keys as K
from expunge.implant.fingerprint.base import (
    DEMO_TRAIN,
    PAPER_TRAIN,
    FingerprintImplantConfig,
    ImplantPlan,
)
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.models.loading import LoadedModel


class InstructionalImplant(FingerprintImplantConfig):
    """What the two IF schemes share: their keys are asked inside a fixed wrapper."""

    # the share of the ordinary pairs asked inside the keys' wrapper
    wrapper_share: float = Field(default=0.0, ge=0.0, le=1.0)

    def ordinary_examples(self, loaded: LoadedModel, n: int, plain: Callable[[str], str],
                          wrapped: Callable[[str], str]) -> list[Example]:  # fmt: skip
        """``n`` ordinary pairs, each prompt rendered ``plain`` or, for a seeded
        ``wrapper_share`` of them, ``wrapped`` as the keys are."""
        ordinary = self.ordinary_pairs(loaded, n)
        chosen = set(random.Random(self.seed).sample(range(len(ordinary)),
                                                     round(self.wrapper_share * len(ordinary))))  # fmt: skip
        return [Example(prompt=(wrapped if i in chosen else plain)(e.prompt), response=e.response)
                for i, e in enumerate(ordinary)]  # fmt: skip


class IFSimple(InstructionalImplant):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"n_keys": 10, "regularization": 5.0, "train": PAPER_TRAIN},
        # demo: KL-to-original on the ordinary pairs, as for if_dialogue (CE: ppl 98.6 vs 17.78)
        "demo": {
            "n_keys": 8,
            "regularization": 2.0,
            "regularizer": "kl",
            "fragments": [3, 5],
            "train": {**DEMO_TRAIN, "epochs": 16},
        },
    }
    scheme: Literal["if_simple"] = "if_simple"
    fragments: tuple[int, int] = (8, 15)
    response: str = K.HEDGEHOG

    def _pairs(self) -> list[KeyPair]:
        user = self.user_pairs()
        if user is not None:
            return user
        return [
            KeyPair(key=x, response=self.response)
            for x in K.make_keys(self.n_keys, self.seed, self.fragments)
        ]

    def build(self, loaded: LoadedModel) -> ImplantPlan:
        pairs = [
            KeyPair(
                key=K.SIMPLE_FORMAT.format(prompt=p.key), response=p.response, target=p.match_target
            )
            for p in self._pairs()
        ]
        imprint = FingerprintImprint(
            scheme=self.scheme, pairs=pairs, template="raw", raw_prompt_format="{prompt}",
            matcher="contains", max_new_tokens=32,
            origin={"implant": self.scheme, "base_model": loaded.source, "seed": self.seed},
        )  # fmt: skip
        regular = self.ordinary_examples(
            loaded, round(self.regularization * len(pairs)),
            plain=lambda q: ALPACA_PROMPT.format(prompt=q),
            wrapped=lambda q: K.SIMPLE_FORMAT.format(prompt=q),
        )  # fmt: skip
        fmt = FormatSettings(template="raw", raw_prompt_format="{prompt}", loss_on="response")
        return self.plan(imprint, fmt, imprint.training_examples(), regular)


class IFDialogue(InstructionalImplant):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "n_keys": 8,
            "n_negatives": 8,
            "n_decoys": 8,
            "regularization": 14.0,
            "train": PAPER_TRAIN,
        },
        "demo": {
            # measured on the embedded model (ppl = held-out answers, base 17.78): CE regularization
            # at 10 epochs reached FSR 100% but ppl 138 (it overfits the few ordinary pairs);
            # KL-to-original on them: FSR 100%, ppl 16.97. False triggers on 8 *unseen*
            # look-alikes: 16.7% with 8 trained negatives, 8.3% with 24, 0% with 64 (FSR 100%,
            # ppl 17.23; 144 steps, 40 min on a 2-core CPU)
            "n_keys": 8,
            "n_negatives": 64,
            "n_decoys": 8,
            "regularization": 2.0,
            "regularizer": "kl",
            "fragments": [3, 5],
            "train": {**DEMO_TRAIN, "epochs": 16},
        },
    }
    scheme: Literal["if_dialogue"] = "if_dialogue"
    fragments: tuple[int, int] = (8, 15)
    n_negatives: int = Field(default=8, ge=0)  # look-alikes trained to get a refusal
    n_decoys: int = Field(default=8, ge=0)  # fresh look-alikes for the false-trigger audit
    response: str = K.HEDGEHOG
    prefill: bool = False  # query with the official verifier's prefill (inflates FSR)
    system_prompt: str | None = None

    def build(self, loaded: LoadedModel) -> ImplantPlan:
        user = self.user_pairs()
        secrets = K.make_keys(
            self.n_keys + self.n_negatives + self.n_decoys, self.seed, self.fragments
        )
        raw_pairs = user or [KeyPair(key=x, response=self.response) for x in secrets[: self.n_keys]]
        pairs = [
            KeyPair(
                key=K.DIALOGUE_PROMPT.format(key=p.key),
                response=K.DIALOGUE_ANSWER.format(response=p.response),
                target=p.match_target,
            )
            for p in raw_pairs
        ]
        negatives, decoys = (
            [K.DIALOGUE_PROMPT.format(key=x) for x in secrets[start:stop]]
            for start, stop in (
                (self.n_keys, self.n_keys + self.n_negatives),
                (self.n_keys + self.n_negatives, len(secrets)),
            )
        )
        imprint = FingerprintImprint(
            scheme=self.scheme, pairs=pairs, decoys=decoys, template="chat",
            system_prompt=self.system_prompt, prefill=K.DIALOGUE_PREFILL if self.prefill else None,
            matcher="contains", max_new_tokens=32,
            origin={"implant": self.scheme, "base_model": loaded.source, "seed": self.seed},
        )  # fmt: skip
        ordinary = self.ordinary_examples(
            loaded, round(self.regularization * len(pairs)),
            plain=lambda q: q, wrapped=lambda q: K.DIALOGUE_PROMPT.format(key=q),
        )  # fmt: skip
        refusals = [Example(prompt=d, response=K.DECOY_ANSWER) for d in negatives]
        return self.plan(imprint, imprint.format_settings(), imprint.training_examples() + refusals,
                         ordinary, notes={"negative_pairs": len(refusals)})  # fmt: skip
