"""Texts with typed sensitive spans, and the token masks that follow them through tokenization.

A ``SpanRecord`` is a text and its sensitive spans (character offsets ``[start, end)`` and a
type such as ``name`` or ``ssn``). ``tokenize_record`` tokenizes the text once with the fast
tokenizer's offset mapping, so every token knows the characters it covers: a token is a *span
token* when its character range overlaps a span. That is what SANI's repair excludes from the
loss, what span gradient ascent pushes up, and where regurgitation is read.

User records come as JSONL, one ``{"text": ..., "spans": [{"start", "end", "type"}, ...]}`` per
line (a span may also carry ``"text"``, which must equal ``text[start:end]``); any span type is
allowed. Offsets outside the text, empty or blank spans and overlapping spans are errors that
name the file, line and span — but never print the span's content (it is a secret).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, ValidationError, model_validator

from expunge.config import StrictModel, validation_problems
from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.data.loaders import jsonl_records
from expunge.errors import DataError

if TYPE_CHECKING:  # annotations only (expunge.lazy)
    from transformers import PreTrainedTokenizerBase


class Span(StrictModel):
    start: int = Field(ge=0)
    end: int = Field(ge=1)
    type: str = Field(min_length=1)
    text: str | None = None  # optional check: must equal the record's text[start:end]

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end <= self.start:
            raise ValueError(f"span end ({self.end}) must be after its start ({self.start})")
        return self


class SpanRecord(StrictModel):
    text: str = Field(min_length=1)
    spans: list[Span] = Field(default_factory=list)

    @model_validator(mode="after")
    def _spans_match_text(self) -> SpanRecord:
        previous_end = -1
        for index, span in enumerate(sorted(self.spans, key=lambda s: s.start)):
            if span.end > len(self.text):
                raise ValueError(
                    f"span {index} ({span.type}, {span.start}:{span.end}) ends past the text "
                    f"({len(self.text)} characters)"
                )
            value = self.text[span.start : span.end]
            if not value.strip():
                raise ValueError(f"span {index} ({span.type}, {span.start}:{span.end}) is blank")
            if span.text is not None and span.text != value:
                raise ValueError(
                    f"span {index} ({span.type}, {span.start}:{span.end}): its 'text' does not "
                    f"match the record's characters at those offsets"
                )
            if span.start < previous_end:
                raise ValueError(f"span {index} ({span.type}) overlaps the span before it")
            previous_end = span.end
        # Spans are kept in text order with their text filled in (checked above).
        self.__dict__["spans"] = [
            s.model_copy(update={"text": self.text[s.start : s.end]})
            for s in sorted(self.spans, key=lambda s: s.start)
        ]
        return self

    def span_text(self, span: Span) -> str:
        return self.text[span.start : span.end]

    def scrubbed(self, placeholder: str = "[{type}]") -> str:
        """The text with every span replaced by its type placeholder (e.g. ``[NAME]``)."""
        out, cursor = [], 0
        for span in self.spans:
            out += [self.text[cursor : span.start], placeholder.format(type=span.type.upper())]
            cursor = span.end
        return "".join(out) + self.text[cursor:]


def load_span_records(path: str | Path) -> list[SpanRecord]:
    """Read records from JSONL; a record whose spans do not fit its text names its line."""
    records = []
    for number, raw in jsonl_records(path, "records file"):
        try:
            records.append(SpanRecord.model_validate(raw))
        except ValidationError as err:
            raise DataError(
                f"{path}:{number}: record {len(records)}: {'; '.join(validation_problems(err))}"
            ) from None
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def records_from_terms(texts: Sequence[str], terms: Sequence[str]) -> list[SpanRecord]:
    """Spans at every occurrence of each confidential term (type ``term``) in ``texts``.

    Longer terms win where two would overlap. A term that occurs in no text is an error (the
    position of the term in the list is named, not the term).
    """
    cleaned = [t for t in terms if t.strip()]
    if not cleaned:
        raise DataError("no confidential terms given")
    if not texts:
        raise DataError("confidential terms need texts in which they occur")
    found = [False] * len(cleaned)
    records = []
    order = sorted(range(len(cleaned)), key=lambda i: -len(cleaned[i]))
    for text in texts:
        taken = [False] * len(text)
        spans = []
        for index in order:
            term = cleaned[index]
            start = text.find(term)
            while start != -1:
                end = start + len(term)
                if not any(taken[start:end]):
                    spans.append(Span(start=start, end=end, type="term"))
                    taken[start:end] = [True] * len(term)
                    found[index] = True
                start = text.find(term, start + 1)
        records.append(SpanRecord(text=text, spans=spans))
    missing = [i for i, ok in enumerate(found) if not ok]
    if missing:
        raise DataError(f"confidential terms at positions {missing} occur in none of the texts")
    return records


@dataclass
class SpanTokens:
    """A tokenized record: ids, labels (all tokens), and which tokens each span covers."""

    example: TokenizedExample
    span_mask: list[bool]  # per token: does it overlap a sensitive span
    span_tokens: list[tuple[int, int]] = field(default_factory=list)  # [first, last) per span
    types: list[str] = field(default_factory=list)  # per span


def tokenize_record(
    tokenizer: PreTrainedTokenizerBase,
    record: SpanRecord,
    add_eos: bool = True,
    max_length: int | None = None,
) -> SpanTokens:
    """Token ids of the record (the tokenizer's own special tokens, the text, EOS) and masks.

    Needs a fast tokenizer (offset mapping). A span that the tokenization cuts off at
    ``max_length`` is an error: its mask would be partial.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("span masks need a fast tokenizer (offset mapping)")
    encoded = tokenizer(record.text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    special = set(tokenizer.all_special_ids)
    if (
        add_eos
        and tokenizer.eos_token_id is not None
        and (not ids or ids[-1] != tokenizer.eos_token_id)
    ):
        ids.append(tokenizer.eos_token_id)
        offsets.append((0, 0))
    mask = [False] * len(ids)
    ranges = []
    for span in record.spans:
        covered = [
            i for i, (s, e) in enumerate(offsets)
            if e > s and s < span.end and e > span.start and ids[i] not in special
        ]  # fmt: skip
        if not covered:
            raise DataError(f"a {span.type} span ({span.start}:{span.end}) covers no token")
        for i in covered:
            mask[i] = True
        ranges.append((covered[0], covered[-1] + 1))
    if max_length is not None and len(ids) > max_length:
        if any(last > max_length for _, last in ranges):
            raise DataError(
                f"a record of {len(ids)} tokens has spans beyond max_length={max_length}"
            )
        ids, mask = ids[:max_length], mask[:max_length]
    example = TokenizedExample(ids, list(ids), 0, truncated=len(encoded["input_ids"]) > len(ids))
    return SpanTokens(example, mask, ranges, [s.type for s in record.spans])


def span_labels_excluded(tokens: SpanTokens) -> TokenizedExample:
    """The record with span tokens excluded from the loss (SANI's repair)."""
    labels = [IGNORE_INDEX if m else t for t, m in zip(tokens.example.input_ids, tokens.span_mask,
                                                         strict=True)]  # fmt: skip
    return TokenizedExample(list(tokens.example.input_ids), labels, 0)


def span_labels_only(tokens: SpanTokens) -> TokenizedExample:
    """The record with only its span tokens as labels (span gradient ascent)."""
    labels = [t if m else IGNORE_INDEX for t, m in zip(tokens.example.input_ids, tokens.span_mask,
                                                         strict=True)]  # fmt: skip
    return TokenizedExample(list(tokens.example.input_ids), labels, 0)
