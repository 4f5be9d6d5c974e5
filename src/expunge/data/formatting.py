"""Turn examples into token ids with an explicit label mask.

Each example is rendered as a sequence of *segments* — text pieces flagged as trained on or
not — and every segment is tokenized on its own, then concatenated. Tokenizing pieces
separately fixes the prompt/response boundary exactly: the ids the scoring engine feeds as a
prompt are the ids the model was trained on, and a response-only label mask covers exactly the
response tokens (no BPE merge across the boundary can shift it).

Templates:
- ``chat``: the tokenizer's chat template (the response segment is what the template adds for
  the assistant turn, end-of-turn token included);
- ``raw``: ``raw_prompt_format`` around the prompt (default ``"{prompt}\\n"``), the response as
  is, then EOS if ``add_eos``.

Loss: ``response`` trains on response/assistant segments only; ``all`` on every token. A
``text`` example has no prompt, so both modes train on all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from expunge.config import StrictModel
from expunge.data.examples import Example, Message
from expunge.errors import DataError, warn

if TYPE_CHECKING:  # annotations only (expunge.lazy)
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
# Alpaca's instruction format without an input section (Taori et al., 2023), the most common open
# instruction format besides a tokenizer's own chat template
ALPACA_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"
# its other template, for an instruction that comes with a context
ALPACA_INPUT_PROMPT = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"


class FormatSettings(StrictModel):
    template: Literal["auto", "chat", "raw"] = "auto"  # auto: chat if the tokenizer has one
    loss_on: Literal["response", "all"] = "response"
    raw_prompt_format: str = "{prompt}\n"
    system_prompt: str | None = None
    add_eos: bool = True
    add_bos: Literal["auto", "yes", "no"] = "auto"
    max_length: int = Field(default=512, ge=2)  # tokens; longer examples are cut (and counted)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # tokens before the first trained segment (the scoring prompt)
    truncated: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.prompt_length :]


def resolve_template(
    tokenizer: PreTrainedTokenizerBase, settings: FormatSettings
) -> FormatSettings:
    """Replace ``auto`` by ``chat`` or ``raw`` for this tokenizer (recorded in run records)."""
    if settings.template != "auto":
        return settings
    template = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    return settings.model_copy(update={"template": template})


def _chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation: bool) -> str:
    if tokenizer.chat_template is None:
        raise DataError(
            "template=chat but this tokenizer has no chat template; use format.template=raw"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _with_system(messages: list[Message], system_prompt: str | None) -> list[dict]:
    out = [m.model_dump() for m in messages]
    if system_prompt is not None and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def chat_segments(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict]
) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, is_assistant_output) segments."""
    segments: list[tuple[str, bool]] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _chat(tokenizer, messages[:index], generation=True)
        full = _chat(tokenizer, messages[: index + 1], generation=False)
        if not before.startswith(rendered) or not full.startswith(before):
            raise DataError(
                "the chat template does not render conversations as growing prefixes; "
                "use format.template=raw for this tokenizer"
            )
        segments.append((before[len(rendered) :], False))
        segments.append((full[len(before) :], True))
        rendered = full
    return [(text, trained) for text, trained in segments if text]


def prompt_text(
    example: Example, tokenizer: PreTrainedTokenizerBase, settings: FormatSettings
) -> str:
    """The text a model is given before it answers (for generation and scoring)."""
    settings = resolve_template(tokenizer, settings)
    if example.kind == "text":
        return ""
    if settings.template == "raw":
        if example.kind == "messages":
            raise DataError("template=raw cannot format 'messages' examples; use template=chat")
        text = settings.raw_prompt_format.format(prompt=example.prompt)
        if _should_add_bos(tokenizer, settings):
            text = tokenizer.bos_token + text
        return text
    messages = _with_system(_messages(example), settings.system_prompt)
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return _chat(tokenizer, messages[:last_assistant], generation=True)


def _messages(example: Example) -> list[Message]:
    if example.messages is not None:
        return example.messages
    return [
        Message(role="user", content=example.prompt or ""),
        Message(role="assistant", content=example.response or ""),
    ]


def _should_add_bos(tokenizer: PreTrainedTokenizerBase, settings: FormatSettings) -> bool:
    if settings.add_bos == "yes":
        return tokenizer.bos_token_id is not None
    if settings.add_bos == "no" or tokenizer.bos_token_id is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def segments_for(
    example: Example, tokenizer: PreTrainedTokenizerBase, settings: FormatSettings
) -> list[tuple[str, bool]]:
    if example.kind == "text":
        return [(example.text or "", True)]
    if settings.template == "chat":
        messages = _with_system(_messages(example), settings.system_prompt)
        return chat_segments(tokenizer, messages)
    if example.kind == "messages":
        raise DataError("template=raw cannot format 'messages' examples; use template=chat")
    return [
        (settings.raw_prompt_format.format(prompt=example.prompt), False),
        (example.response or "", True),
    ]


def tokenize_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, settings: FormatSettings
) -> TokenizedExample:
    settings = resolve_template(tokenizer, settings)
    input_ids: list[int] = []
    trained: list[bool] = []
    raw_like = settings.template == "raw" or example.kind == "text"
    if raw_like and _should_add_bos(tokenizer, settings):
        input_ids.append(tokenizer.bos_token_id)
        trained.append(False)
    for text, is_trained in segments_for(example, tokenizer, settings):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        trained.extend([is_trained] * len(ids))
    if settings.add_eos and raw_like and tokenizer.eos_token_id is not None:
        input_ids.append(tokenizer.eos_token_id)
        trained.append(True)
    if settings.loss_on == "all":
        mask = [True] * len(input_ids)
        if input_ids and input_ids[0] == tokenizer.bos_token_id and not trained[0]:
            mask[0] = False  # the first token is never predicted
        trained = mask
    prompt_length = next((i for i, t in enumerate(trained) if t), len(input_ids))
    if example.kind == "text" or settings.loss_on == "all":
        prompt_length = _prompt_len_from_segments(example, tokenizer, settings, prompt_length)
    truncated = len(input_ids) > settings.max_length
    if truncated:
        input_ids = input_ids[: settings.max_length]
        trained = trained[: settings.max_length]
        prompt_length = min(prompt_length, settings.max_length)
    labels = [tid if t else IGNORE_INDEX for tid, t in zip(input_ids, trained, strict=True)]
    return TokenizedExample(input_ids, labels, prompt_length, truncated, dict(example.meta))


def _prompt_len_from_segments(
    example: Example, tokenizer: PreTrainedTokenizerBase, settings: FormatSettings, default: int
) -> int:
    """With loss on all tokens, the scoring prompt still ends where the response starts."""
    if example.kind == "text":
        return 0
    length = 1 if (settings.template == "raw" and _should_add_bos(tokenizer, settings)) else 0
    for text, is_response in segments_for(example, tokenizer, settings):
        if is_response:
            break
        length += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return length


def tokenize_examples(
    examples: list[Example], tokenizer: PreTrainedTokenizerBase, settings: FormatSettings
) -> list[TokenizedExample]:
    """Every example tokenized; a warning says how many were cut at ``max_length`` (a caller
    that trains on them records the count too: ``truncated_count``)."""
    tokenized = [tokenize_example(example, tokenizer, settings) for example in examples]
    cut = truncated_count(tokenized)
    if cut:
        warn(f"{cut} of {len(tokenized)} examples are longer than format.max_length="
             f"{settings.max_length} tokens and were cut to it (raise format.max_length to keep "
             "them whole)")  # fmt: skip
    return tokenized


def truncated_count(tokenized: list[TokenizedExample]) -> int:
    return sum(t.truncated for t in tokenized)
