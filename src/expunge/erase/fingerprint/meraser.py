"""MEraser — Mismatched Eraser (Zhang et al., ACL 2025).

Removes backdoor fingerprints knowing neither key, response nor layers, with < 1,000 samples of
ordinary fine-tuning in two LoRA phases:

1. **Erase**: fine-tune on a *mismatched* set — question_i paired with answer_j of a question
   of another type (what / why / how / other) — which breaks the input→output associations the
   fingerprint lives in. LoRA r=8, α=16, dropout 0.05 on q_proj+v_proj; 5 epochs, lr 5e-4
   constant, grad-clip 0.5; 300 pairs.
2. **Merge** the erase adapter into the weights (it is saved: a reusable artefact).
3. **Recover**: a new LoRA (r=16, α=32) on 600 clean Q/A pairs, 2 epochs, lr 5e-4 cosine,
   clip 1.0, restores utility. The result is the erased model + the recover adapter, merged.

Input format, as in the authors' code: erase = question + mismatched answer concatenated;
recover = question + "\\n" + answer; no chat template, no BOS, no EOS, sequences up to 512.
**Loss**: the released scripts build prompt-masked labels, then a collator overwrites them, so
the effective loss covers the whole sequence — our default (``loss_on=all``); ``loss_on=response``
is the option. Batch size is not stated in the paper; 4 per step is our assumption.

**Transferable erasure** (``adapter=ERASE_DIR``): an erase adapter trained on the clean base is
merged into a fingerprinted derivative of it, optionally followed by recovery.

``preset=demo`` is sized for the embedded model on a CPU and departs from the authors where
their setting did not erase there: the pairs are rendered in the model's chat template, the
erase is LoRA r=16 on every linear layer at lr 3e-3 for 10 epochs of 64 pairs, and the recovery
distils (below) on 128 pairs with LoRA on every linear layer. Why, and what the other settings
did, is measured in ``docs/results/`` (MEraser files): at this scale the erase can suppress a
fingerprint rather than remove it, so always audit after recovery and under relearning.

``preset=general`` (ours): 64 random-string erase pairs, 6 erase epochs, a recovery from the
clean base (``recover_teacher``) on 256 pairs and ordinary text (``recover_text``) with an exact
teacher, ``erase_kept=0.9``, half of the pairs in Alpaca's instruction format, half of those
with an input section, and 128 of the model's own unprompted samples from each format's start
(below). The teacher defaults to the model the fingerprint was implanted on, where the run
records of the given model name it (``records.implanted_on``); the text to
``builtin:python_prose``, shipped prose. It takes more than twice the demo preset's time. It was
chosen on three key styles where ``demo`` left one in after recovery, and it does not always
hold either: whether a suppressed key comes back flips with a tenth of the erase, with the seed
and with the host (``docs/results/``, generalization). Audit after recovery.

``erase_kept=F`` (ours; 0.9 in ``preset=general``): after the recovery, the returned model keeps
the share F of the erase adapter and the rest is taken back out, θ = θ_0 + F·ΔE + ΔR, where the
recovery ΔR was trained on θ_0 + ΔE. Measured on the protocol's worlds, whether a key comes back
flips with a tenth of the erase's strength either way, and every share below 1 lowered ppl
(``docs/results/``, generalization, "The erase's share after the recovery").

``instruction_share=F`` (ours; 0.5 in ``preset=general``, 0 elsewhere): the share F of the erase
pairs and of the recovery pairs is rendered in Alpaca's instruction format (``### Instruction: …
### Response:``) and the rest in ``template``. MEraser knows no more of a fingerprint's format
than of its key; a model that answers in its chat template may also have been tuned in that
other common format, as Instructional Fingerprinting's ``if_simple`` is, and pairs in one format
leave a fingerprint in the other to the recovery (measured: ``docs/results/``, generalization).
``instruction_input_share=F`` (ours; 0.5 in ``preset=general``) gives the share F of those pairs
Alpaca's other template, with an input section holding another pool question: ``if_simple`` asks
its keys with an input. It kept the emoji-and-number keys out where the share alone did not, and
left as many log-line and lab-label keys back; on four chat-template runs it met the target at
the preset's ppl or lower (measured). ``instruction_input=TEXT`` (ours, opt-in) puts
one fixed text in those input sections instead, such as a published scheme's marker
(``if_simple``'s ``FINGERPRINT``): a format the user suspects, never a key.

``recover_outside_erase=true`` (ours, opt-in) keeps the recover adapter's output directions
orthogonal to the erase adapter's in every layer both touch, so the recovery cannot cancel the
erase. ``recover_teacher=MODEL`` (ours) recovers from another model's answers, and distils from
it, instead of the model as given.

``recover_objective=kl`` (ours, opt-in): recover by distillation — KL(p_input ‖ p_θ) on the
recovery prompts and answers, the teacher being the model *as it was given* (a frozen copy kept
from before the erase) — instead of CE on its greedy answers: the whole next-token
distribution is restored, not one sampled answer.

``recover_temperature=T`` (ours, opt-in): the recovery answers are sampled at temperature T
(seeded) rather than greedy; with ``recover_objective=kl`` the distillation then sees text drawn
from the teacher's distribution instead of its single most likely continuation.

``random_inputs=N`` (ours, opt-in): N more erase pairs whose question is a random string (a mix
of characters from many scripts, emoji, digits and punctuation, and of the tokenizer's own
vocabulary pieces), each paired with an answer from the erase pool. The mismatched questions are
ordinary questions, so they leave keys that look like none (emoji, foreign scripts, under-trained
tokens) untouched; random strings reach that part of the input space, still knowing no key.

``recover_text=DATA`` (ours, opt-in): ordinary text (``text`` rows or prompt/response rows; up
to ``n_recover_text``) that the recovery distils on beside its pairs, with the same objective and
teacher, in the pairs' format: with ``template=chat`` a text row becomes a user turn (its first
sentence) and the assistant's answer (the rest; a one-sentence row is left out), with ``raw`` it
stays plain text (prompt and response joined by a newline). The built-in pairs are the teacher's
own short answers, which a recovery fits long before held-out text is as likely as before the
erase; text people wrote covers what those answers do not. Plain text in a chat-format recovery
revived a raw-format fingerprint that the same text as chat turns left out (measured).
``recover_text_template=raw|chat`` renders the text in a format of its own instead. A derivative
tuned on a task of its own loses the task in the erase; a recovery on the task's data restores
what that data covers, and more of it in the format the task was taught in (measured:
``docs/results/``, generalization).

``recover_self_samples=N`` (ours; 128 in ``preset=general``): before the erase, N samples
(temperature 1, seeded, ``self_sample_tokens`` long) of what the given model writes from each
format's start alone (Alpaca's ``### Instruction:``, the chat template's user turn:
``expunge.data.self_samples``) are distilled toward the clean teacher in the recovery, a third
stream beside the pairs and the text. A model tuned to answer keys with a memorized text can also
write that text unprompted (measured: ``docs/results/``, generalization), so the teacher's
distribution is imposed where the model's own memorized text runs, still knowing no key or
response. It needs a teacher other than the model as given (``recover_teacher``, or
``preset=general``): toward itself the samples would be taught again. The samples stay in memory;
the record holds their counts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from expunge.config import deep_merge
from expunge.data.examples import Example
from expunge.data.formatting import (
    ALPACA_INPUT_PROMPT,
    ALPACA_PROMPT,
    FormatSettings,
    TokenizedExample,
    tokenize_examples,
)
from expunge.data.loaders import load_examples
from expunge.data.qa_pool import QUESTION_TYPES, pool_size, self_answered_pool, with_types
from expunge.data.random_strings import random_string, vocabulary_pieces
from expunge.data.self_samples import unprompted_samples
from expunge.erase.base import EraserConfig
from expunge.errors import ConfigError, DataError
from expunge.models.loading import LoadedModel, ModelSettings, check_compatible
from expunge.models.lora import (
    adapter_output_bases,
    constrain_outside,
    load_adapter,
    match_modules,
    merge_lora,
    release_constraints,
    save_adapter,
    scale_lora,
)
from expunge.records import implanted_on
from expunge.stage import StageContext
from expunge.train.kl import KLRetainObjective
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective, SumObjective
from expunge.train.reference import Reference
from expunge.train.settings import TrainSettings

ERASE_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 5, "lr": 5e-4, "schedule": "constant", "max_grad_norm": 0.5,
    "batch_size": 4, "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
}  # fmt: skip
ALL_LINEAR: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["all-linear"]}
RECOVER_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 2, "lr": 5e-4, "schedule": "cosine", "max_grad_norm": 1.0,
    "batch_size": 4, "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
}  # fmt: skip


def mismatch(examples: list[Example], seed: int = 0) -> list[Example]:
    """Pair every question with the answer of a question of *another type*.

    Answers are drawn without replacement from the other types' pool (reused only when a type
    has more questions than all other types have answers), so no pair keeps its own answer.
    """
    typed = with_types(examples)
    rng = random.Random(seed)
    by_type: dict[str, list[int]] = {t: [] for t in QUESTION_TYPES}
    for index, example in enumerate(typed):
        by_type.setdefault(example.meta["qtype"], []).append(index)
    if sum(1 for ids in by_type.values() if ids) < 2:
        raise DataError(
            "the mismatched set needs questions of at least two types (what/why/how/other)"
        )
    available = {t: rng.sample(ids, len(ids)) for t, ids in by_type.items()}
    out = []
    for example in typed:
        qtype = example.meta["qtype"]
        others = [t for t in available if t != qtype and by_type[t]]
        # draw from the other type with the most unused answers left: keeps the set balanced
        chosen = max(others, key=lambda t: (len(available[t]), rng.random()))
        if not available[chosen]:
            available[chosen] = rng.sample(by_type[chosen], len(by_type[chosen]))
        donor = typed[available[chosen].pop()]
        out.append(Example(prompt=example.prompt, response=donor.response,
                           meta={"qtype": qtype, "answer_qtype": chosen, "answer_of": donor.prompt}))  # fmt: skip
    return out


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def text_as_turns(example: Example) -> Example | None:
    """A ``text`` row as a user turn (its first sentence) and an answer (the rest); None for one
    sentence. Other rows are returned as they are."""
    if example.kind != "text":
        return example
    parts = SENTENCE_END.split((example.text or "").strip(), maxsplit=1)
    return Example(prompt=parts[0], response=parts[1]) if len(parts) == 2 else None


def in_instruction_format(
    examples: list[Example],
    share: float,
    phase: str,
    seed: int = 0,
    input_share: float = 0.0,
    inputs: Sequence[str] = (),
) -> list[Example]:
    """A seeded ``share`` of ``examples`` as text in Alpaca's instruction format (prompt, then
    response, trained on all of it under either template); the others are returned as they are.
    A seeded ``input_share`` of those takes Alpaca's template with an input section, the input
    drawn from ``inputs``: never the pair's own prompt, unless it is the only one."""
    rng = random.Random(f"meraser-formats-{phase}-{seed}")
    chosen = set(rng.sample(range(len(examples)), round(share * len(examples))))
    # a stream of its own, so that input_share=0 renders what it rendered before the option
    input_rng = random.Random(f"meraser-inputs-{phase}-{seed}")
    with_input = set(input_rng.sample(sorted(chosen), round(input_share * len(chosen))))
    if with_input and not inputs:
        raise DataError("instruction_input_share needs ordinary text to draw the inputs from")

    def rendered(example: Example, index: int) -> Example:
        if index not in with_input:
            return Example(text=ALPACA_PROMPT.format(prompt=example.prompt) + example.response)
        context = input_rng.choice([t for t in inputs if t != example.prompt] or list(inputs))
        prompt = ALPACA_INPUT_PROMPT.format(prompt=example.prompt, input=context)
        return Example(text=prompt + example.response)

    return [rendered(e, i) if i in chosen else e for i, e in enumerate(examples)]


def random_input_pairs(
    answers: list[Example], n: int, pieces: list[str], seed: int = 0
) -> list[Example]:
    """``n`` pairs of a random string (``random_string``) and an answer drawn from ``answers``."""
    if n and not answers:
        raise DataError("random_inputs needs erase pairs to draw answers from (n_erase > 0)")
    rng = random.Random(f"meraser-random-inputs-{seed}")
    return [Example(prompt=random_string(rng, pieces), response=rng.choice(answers).response,
                    meta={"qtype": "random"}) for _ in range(n)]  # fmt: skip


# Erase: the one setting measured to erase all four schemes from the embedded model and keep them
# erased after recovery. Recover: the strongest distillation measured to leave the fingerprint out
# (if_dialogue and utf; the four-scheme runs used q/v on 48 pairs). The module docstring says what
# did not work.
DEMO_PRESET: dict[str, Any] = {
    "n_erase": 64, "n_recover": 128, "answer_tokens": 32, "template": "chat",
    "recover_objective": "kl",
    "erase": {**ERASE_TRAIN, "epochs": 10, "lr": 3e-3, "batch_size": 4, "lora": ALL_LINEAR},
    "recover": {**RECOVER_TRAIN, "epochs": 2, "lr": 1e-3, "batch_size": 4, "lora": ALL_LINEAR},
}  # fmt: skip
# Chosen on the generalization protocol's three fingerprint worlds (emoji, passphrase and code
# keys), none of them the demo's: random strings reach keys unlike any question, 6 epochs instead
# of 10 damage less, and the recovery distils twice the pairs once each plus ordinary text from
# the clean base with an exact teacher; keeping part of the erase after the recovery (0.8 then)
# met MEraser's target on the most of those worlds' runs (4 of 10, against 2 with all of it). Half
# of the pairs in Alpaca's format, half of those with an input section, met it on 7 of 9 runs of
# six worlds where the preset without them met it on 4, and missed it on none the preset met. The
# model's own unprompted text, distilled toward the base, met it on 4 of 6 runs of three worlds (two
# phrase seeds, two log-line seeds), where the preset met it on the two phrase runs; the lab
# labels let 4 and 6 keys of 8 back against 8. With those samples, 0.9 of the erase kept met it on
# all six of those runs (0.8: four) and on every held-out run since, some within half a point of
# the ppl limit (docs/results/2026-12-03-generalization.md). Its teacher is the base the run
# records name, or recover_teacher (validate_inputs says so); its text is the prose every run
# above distilled on.
GENERAL_PRESET: dict[str, Any] = deep_merge(DEMO_PRESET, {
    "n_recover": 256, "random_inputs": 64, "recover_text": "builtin:python_prose",
    "n_recover_text": 777,
    "erase": {"epochs": 6}, "recover": {"reference_cache": "off"}, "erase_kept": 0.9,
    "instruction_share": 0.5, "instruction_input_share": 0.5, "recover_self_samples": 128,
})  # fmt: skip


class MEraser(EraserConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"n_erase": 300, "n_recover": 600, "erase": ERASE_TRAIN, "recover": RECOVER_TRAIN},
        "demo": DEMO_PRESET,
        "general": GENERAL_PRESET,
    }
    method: Literal["meraser"] = "meraser"
    data: str | None = None  # Q/A JSONL or dataset; default: the model's own answers to the pool
    n_erase: int = Field(default=300, ge=2)
    n_recover: int = Field(default=600, ge=0)
    answer_tokens: int = Field(default=48, ge=4)  # length of self-generated pool answers
    erase: TrainSettings = Field(default_factory=lambda: TrainSettings(**ERASE_TRAIN))
    recover: TrainSettings = Field(default_factory=lambda: TrainSettings(**RECOVER_TRAIN))
    loss_on: Literal["all", "response"] = "all"
    random_inputs: int = Field(default=0, ge=0)  # ours, opt-in: see the module docstring
    # raw: the authors' plain concatenation; chat: pairs rendered in the model's chat template,
    # which reaches fingerprints implanted in chat format on small models (measured)
    template: Literal["raw", "chat"] = "raw"
    max_length: int = 512
    recover_objective: Literal["ce", "kl"] = "ce"
    # ours, opt-in: the recover adapter's output directions stay orthogonal to the erase
    # adapter's in every layer both touch, so recovery cannot simply cancel the erase
    recover_outside_erase: bool = False
    # ours: the share of the erase adapter kept after the recovery (1: all); the rest is subtracted
    erase_kept: float = Field(default=1.0, ge=0.0, le=1.0)
    adapter: str | None = None  # transferable erasure: merge this erase adapter instead of training
    do_recover: bool = True
    # recover from another model (e.g. the public base the given model derives from): its own
    # answers are the recovery data and, with recover_objective=kl, it is the teacher
    recover_teacher: str | None = None
    # ours, opt-in: sample the recovery answers at this temperature instead of greedily, so the
    # distillation covers the teacher's distribution, not only its most likely answer
    recover_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    # ours, opt-in: ordinary text (a data spec) the recovery also distils on, beside its pairs
    recover_text: str | None = None
    n_recover_text: int = Field(default=512, ge=1)
    # ours: the format recover_text is rendered in (default: the pairs' ``template``); a
    # derivative's own task data recovers best in the format it was tuned in
    recover_text_template: Literal["raw", "chat"] | None = None
    # ours (0.5 in preset=general): this share of the erase and recovery pairs is in Alpaca's
    # instruction format
    instruction_share: float = Field(default=0.0, ge=0.0, le=1.0)
    # ours (0.5 in preset=general): this share of those pairs is in Alpaca's template with an
    # input section
    instruction_input_share: float = Field(default=0.0, ge=0.0, le=1.0)
    # ours, opt-in: the one input of those rows (a public format's marker, never a key);
    # default: another question of the same pool
    instruction_input: str | None = Field(default=None, min_length=1)
    # ours (128 in preset=general): this many of the given model's own samples from each format's
    # start, distilled toward the teacher in the recovery (the module docstring)
    recover_self_samples: int = Field(default=0, ge=0)
    self_sample_tokens: int = Field(default=48, ge=4)

    def validate_inputs(self) -> None:
        if self.preset == "general" and self.teacher() is None:
            raise ConfigError(
                "preset=general recovers from the clean model the fingerprinted one was tuned "
                f"from, and no run record of {self.model.name} names the model its fingerprint "
                "was implanted on: give recover_teacher=BASE_MODEL"
            )
        if self.preset == "general" and self.recover_text is None:
            raise ConfigError("preset=general also distils on ordinary text: give "
                              "recover_text=DATA (the preset's is builtin:python_prose)")  # fmt: skip
        if self.instruction_input_share and not self.instruction_share:
            raise ConfigError("instruction_input_share is a share of the instruction-format "
                              "pairs: set instruction_share above 0 too, or "
                              "instruction_input_share=0")  # fmt: skip
        if self.instruction_input is not None and not self.instruction_input_share:
            raise ConfigError("instruction_input is the input of the rows that "
                              "instruction_input_share gives one: set that share above 0 too")  # fmt: skip
        if self.recover_self_samples and not (
            self.do_recover and self.recover_objective == "kl" and self.teacher() is not None
        ):
            preset_value = self.PRESETS.get(self.preset, {}).get("recover_self_samples")
            origin = (
                f" (set by preset={self.preset})"
                if preset_value == self.recover_self_samples
                else ""
            )
            raise ConfigError(
                f"recover_self_samples={self.recover_self_samples}{origin} distils another model "
                "(the clean base) on the given model's own samples; it "
                "needs do_recover=true, recover_objective=kl and recover_teacher=BASE_MODEL (or "
                "preset=general with run records that name it): give those, or "
                "recover_self_samples=0"
            )
        if self.recover_outside_erase and (self.method != "meraser" or not self.do_recover):
            raise ConfigError(
                "recover_outside_erase constrains MEraser's recovery against its erase adapter; "
                f"it needs method=meraser with do_recover=true (got method={self.method}, "
                f"do_recover={self.do_recover})"
            )
        if self.recover_outside_erase and (
            self.recover.mode != "lora" or (self.erase.mode != "lora" and not self.adapter)
        ):
            raise ConfigError("recover_outside_erase needs LoRA in both phases (erase.mode and "
                              "recover.mode = lora)")  # fmt: skip
        if self.erase_kept != 1.0:
            missing = [
                need for need, ok in (
                    ("method=meraser", self.method == "meraser"),
                    ("do_recover=true", self.do_recover),
                    ("a LoRA erase (erase.mode=lora or adapter=DIR)",
                     self.erase.mode == "lora" or self.adapter),
                ) if not ok
            ]  # fmt: skip
            if missing:
                raise ConfigError(
                    f"erase_kept={self.erase_kept:g} takes part of MEraser's erase adapter back "
                    f"out after its recovery and needs {', '.join(missing)}; give erase_kept=1 "
                    "to keep the whole erase"
                )
        if self.adapter is not None and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise ConfigError(
                f"{self.adapter} is not an erase adapter directory (no adapter_config.json)"
            )
        if self.data is not None:
            self._user_pool()
        if self.recover_text_template is not None and self.recover_text is None:
            raise ConfigError("recover_text_template is the format of recover_text; give "
                              "recover_text=DATA")  # fmt: skip
        if self.recover_text is not None:
            if not self.do_recover:
                raise ConfigError("recover_text is distilled on during recovery; it needs "
                                  "do_recover=true")  # fmt: skip
            if not self._recover_text():
                raise DataError(f"{self.recover_text}: no text or prompt/response rows"
                                + (" (with template=chat a text row needs two sentences)"
                                   if self.template == "chat" else ""))  # fmt: skip

    def pairs_needed(self) -> tuple[int, int]:
        """(pairs to mismatch, pairs in all)."""
        # transferable erasure and the incremental baseline need no mismatched pairs
        need_erase = 0 if self.adapter or self.method != "meraser" else self.n_erase
        return need_erase, need_erase + (self.n_recover if self.do_recover else 0)

    def _too_few_pairs(self, have: int, advice: str) -> str:
        need_erase, need = self.pairs_needed()
        return (
            f"{self.method} needs {need} Q/A pairs ({need_erase} to mismatch + "
            f"{need - need_erase} to recover), {have}; give {advice} or lower n_recover"
            + (" / n_erase" if need_erase else "")
        )

    @model_validator(mode="after")
    def _fits_the_pool(self) -> MEraser:
        # said when the config is read, not after minutes of answering the whole pool
        if self.data is None and self.pairs_needed()[1] > pool_size():
            raise ValueError(self._too_few_pairs(
                f"the built-in pool has {pool_size()} questions",
                "data=FILE (JSONL with prompt/response)",
            ))  # fmt: skip
        return self

    def _inputs(self, pool: list[Example]) -> list[str]:
        """What the input sections of ``instruction_input_share`` hold: ``instruction_input``,
        or the pool's questions."""
        return [self.instruction_input] if self.instruction_input else [e.prompt for e in pool]

    def _recover_text(self) -> list[Example]:
        """``recover_text`` in ``text_template`` (the module docstring)."""
        examples = [e for e in load_examples(self.recover_text, max_examples=self.n_recover_text)
                    if e.kind != "messages"]  # fmt: skip
        if self.text_template == "chat":
            return [turns for e in examples if (turns := text_as_turns(e)) is not None]
        return [e if e.kind == "text" else Example(text=f"{e.prompt}\n{e.response}")
                for e in examples]  # fmt: skip

    @property
    def text_template(self) -> Literal["raw", "chat"]:
        return self.recover_text_template or self.template

    def _text_format(self) -> FormatSettings:
        if self.text_template == "chat":
            return self._format("\n", "chat")
        return FormatSettings(template="raw", loss_on="all", max_length=self.max_length)

    def _user_pool(self) -> list[Example]:
        pool = [e for e in load_examples(self.data) if e.prompt is not None]
        if not pool:
            raise DataError(f"{self.data}: no prompt/response pairs for the Q/A pool")
        return pool

    def pool(
        self, loaded: LoadedModel, answerer: LoadedModel | None = None
    ) -> tuple[list[Example], list[Example]]:
        """(pairs to mismatch, pairs to recover on); ``answerer`` answers the recovery pairs."""
        need_erase, need = self.pairs_needed()
        if need == 0:
            return [], []
        # recovery answers of their own (another model's, or sampled) replace the greedy ones,
        # so the greedy pass only answers the erase questions
        separate = (answerer is not None or self.recover_temperature > 0) and self.do_recover
        if self.data:
            pool = self._user_pool()
        else:
            pool = self_answered_pool(loaded, need_erase if separate else need, seed=self.seed,
                                      max_new_tokens=self.answer_tokens,
                                      precision=self.audit_precision)  # fmt: skip
            if separate:
                pool += self_answered_pool(answerer or loaded, need, seed=self.seed,
                                           max_new_tokens=self.answer_tokens,
                                           temperature=self.recover_temperature,
                                           start=need_erase,
                                           precision=self.audit_precision)  # fmt: skip
        if len(pool) < need:
            where = f"{self.data}: " if self.data else ""
            raise DataError(where + self._too_few_pairs(f"the pool has {len(pool)}", "more"))
        return pool[:need_erase], pool[need_erase:need]

    def _format(self, separator: str, template: str | None = None) -> FormatSettings:
        if (template or self.template) == "chat":
            return FormatSettings(template="chat", loss_on=self.loss_on, max_length=self.max_length)
        return FormatSettings(
            template="raw", raw_prompt_format="{prompt}" + separator, loss_on=self.loss_on,
            add_eos=False, add_bos="no", max_length=self.max_length,
        )  # fmt: skip

    def _phase(self, loaded: LoadedModel, examples: list[Example], fmt: FormatSettings,
               settings: TrainSettings, work: Path, name: str,
               teacher: Reference | None = None,
               text: list[Example] | None = None,
               samples: list[TokenizedExample] | None = None) -> tuple[Any, Any]:  # fmt: skip
        """Train one phase on ``examples`` (the ``train`` stream) and, in a recovery with
        ``recover_text`` or ``recover_self_samples``, on those too (a ``text`` and a ``self``
        stream with the same objective)."""
        streams = {"train": tokenize_examples(examples, loaded.tokenizer, fmt)}
        constrain = name == "recover" and self.recover_outside_erase
        if constrain:  # layer names resolved on the plain model, before LoRA wraps them
            bases = adapter_output_bases(self.adapter or work / "erase_adapter")
            shared = set(bases) & set(match_modules(loaded.model, settings.lora.targets))
        model = prepare_trainable(loaded.model, settings)
        if constrain:
            constrained = set(constrain_outside(model, bases))
            if constrained != shared:
                raise ConfigError(f"recover_outside_erase: could not constrain layers "
                                  f"{sorted(shared - constrained)}")  # fmt: skip

        def toward_teacher(stream: str) -> LMObjective | KLRetainObjective:
            return (
                LMObjective(stream)
                if teacher is None
                else KLRetainObjective(model, stream, teacher)
            )

        terms: list[tuple[float, Any]] = [(1.0, toward_teacher("train"))]
        if text:
            streams["text"] = tokenize_examples(text, loaded.tokenizer, self._text_format())
            terms.append((1.0, toward_teacher("text")))
        if samples:
            streams["self"] = samples
            terms.append((1.0, toward_teacher("self")))
        objective: Any = SumObjective(*terms) if len(terms) > 1 else terms[0][1]
        model, result = train(
            model, streams, objective, settings,
            loaded.tokenizer.pad_token_id, out_dir=work / name, description=f"MEraser {name}",
        )  # fmt: skip
        release_constraints(model)
        return model, result

    def _train_merge(self, ctx: StageContext, examples: list[Example], fmt: FormatSettings,
                     settings: TrainSettings, name: str,
                     teacher: Reference | None = None,
                     text: list[Example] | None = None,
                     samples: list[TokenizedExample] | None = None) -> None:  # fmt: skip
        """One phase: train; a LoRA phase keeps its adapter as an artefact and merges it into the
        weights (a full fine-tuning phase has no adapter: its weights are the model's)."""
        loaded, record = ctx.model, ctx.record
        model, result = self._phase(loaded, examples, fmt, settings, ctx.work, name, teacher,
                                    text, samples)  # fmt: skip
        if settings.mode == "lora":
            save_adapter(model, ctx.work / f"{name}_adapter")
            record.artifacts[f"{name}_adapter"] = f"{name}_adapter"
        result.note(record, name)
        record.metrics.update(
            {f"{name}/train_final_loss": result.final_loss, f"{name}/train_steps": result.steps}
        )
        loaded.model = merge_lora(model)

    def _check_shared_layers(self, loaded: LoadedModel) -> None:
        """Fail before any training when the constraint would have nothing to act on."""
        if not self.recover_outside_erase:  # validate_inputs: then there is a LoRA recovery
            return
        if self.adapter:
            erased = set(adapter_output_bases(self.adapter))
        else:
            erased = set(match_modules(loaded.model, self.erase.lora.targets))
        if not erased & set(match_modules(loaded.model, self.recover.lora.targets)):
            raise ConfigError(
                "recover_outside_erase: the recover LoRA targets share no layer with the erase "
                "adapter's; give recover.lora.targets that include its layers"
            )

    def teacher(self) -> str | None:
        """The model the recovery answers and distils from when it is not the given one:
        ``recover_teacher``, or under ``preset=general`` the model the given one's fingerprint
        was implanted on, as its run records say (``records.implanted_on``)."""
        if self.recover_teacher is not None or self.preset != "general":
            return self.recover_teacher
        return implanted_on(self.model.name)

    def notes(self) -> list[str]:
        teacher = self.teacher()
        if self.recover_teacher is not None or teacher is None:
            return []
        return [f"recover_teacher is {teacher}, the model the fingerprint of "
                f"{self.model.name} was implanted on (its run records); pass "
                "recover_teacher=MODEL for another"]  # fmt: skip

    def models_to_load(self) -> dict[str, ModelSettings]:
        models = super().models_to_load()
        teacher = self.teacher()
        if teacher is not None:
            models["teacher"] = self.model.model_copy(update={"name": teacher, "adapter": None})
        return models

    def execute(self, ctx: StageContext) -> None:
        loaded = ctx.model
        self._check_shared_layers(loaded)
        source = ctx.models.get("teacher")
        if source is not None:
            teacher_name = self.teacher()
            check_compatible(loaded.model, source.model, str(teacher_name))
            if self.recover_teacher is None:  # read from the run records: say where from
                ctx.record.inputs["recover_teacher"] = {"model": teacher_name,
                                                        "from": "the run records of the model"}  # fmt: skip
        erase_pool, recover_pool = self.pool(loaded, source)
        samples = None
        if self.recover_self_samples and self.do_recover:  # from the model as given
            samples, counts = unprompted_samples(loaded, self.recover_self_samples,
                                                 self.self_sample_tokens, self.seed,
                                                 self.audit_precision)  # fmt: skip
            # counts only: the samples may hold the fingerprint's responses
            ctx.record.inputs["recover_self_samples"] = {"per_start": counts,
                                                         "max_new_tokens": self.self_sample_tokens,
                                                         "temperature": 1.0}  # fmt: skip
        # the distillation teacher is the model as given (or recover_teacher), frozen before
        # anything changes it
        teacher = (
            Reference((source or loaded).model)
            if self.do_recover and self.recover_objective == "kl"
            else None
        )
        if self.adapter:
            ctx.record.inputs["erase_adapter"] = str(Path(self.adapter).resolve())
            loaded.model = merge_lora(load_adapter(loaded.model, self.adapter))
        else:
            mismatched = mismatch(erase_pool, self.seed)
            if self.random_inputs:
                pieces = vocabulary_pieces(loaded.tokenizer)
                mismatched += random_input_pairs(erase_pool, self.random_inputs, pieces, self.seed)
            mismatched = in_instruction_format(mismatched, self.instruction_share, "erase",
                                               self.seed, self.instruction_input_share,
                                               self._inputs(erase_pool))  # fmt: skip
            self._train_merge(ctx, mismatched, self._format(""), self.erase, "erase")
        self.audit(ctx, "erased", output=not self.do_recover)
        if self.do_recover:
            text = self._recover_text() if self.recover_text else None
            if text:
                ctx.record.inputs["recover_text"] = {"data": self.recover_text,
                                                     "examples": len(text),
                                                     "format": self.text_template}  # fmt: skip
            recover_pairs = in_instruction_format(recover_pool, self.instruction_share, "recover",
                                                  self.seed, self.instruction_input_share,
                                                  self._inputs(recover_pool))  # fmt: skip
            self._train_merge(ctx, recover_pairs, self._format("\n"), self.recover, "recover",
                              teacher, text, samples)  # fmt: skip
            if self.erase_kept != 1.0:
                erase = load_adapter(loaded.model, self.adapter or ctx.work / "erase_adapter")
                scale_lora(erase, self.erase_kept - 1.0)
                loaded.model = merge_lora(erase)
            self.audit(ctx, "recovered", output=True)
        ctx.record.inputs["pairs"] = {"erase": len(erase_pool), "recover": len(recover_pool),
                                      "instruction_share": self.instruction_share,
                                      "instruction_input_share": self.instruction_input_share}  # fmt: skip
