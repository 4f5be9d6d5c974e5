"""Typed examples: one of ``{"prompt", "response"}``, ``{"text"}`` or ``{"messages"}``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Example(BaseModel):
    """One training or evaluation example. Extra JSON keys are kept in ``meta``."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    response: str | None = None
    text: str | None = None
    messages: list[Message] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_shape(self) -> Example:
        shapes = [
            self.prompt is not None or self.response is not None,
            self.text is not None,
            self.messages is not None,
        ]
        if sum(shapes) != 1:
            raise ValueError("an example needs exactly one of: prompt+response, text, or messages")
        if (self.prompt is None) != (self.response is None):
            raise ValueError("'prompt' and 'response' must be given together")
        if self.messages is not None and not any(m.role == "assistant" for m in self.messages):
            raise ValueError("'messages' needs at least one assistant turn to train on")
        return self

    @property
    def kind(self) -> str:
        if self.text is not None:
            return "text"
        if self.messages is not None:
            return "messages"
        return "prompt_response"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Example:
        known = {"prompt", "response", "text", "messages"}
        fields = {k: v for k, v in record.items() if k in known}
        meta = {k: v for k, v in record.items() if k not in known}
        if isinstance(meta.get("meta"), dict):
            meta = {**meta.pop("meta"), **meta}
        return cls(**fields, meta=meta)

    def to_record(self) -> dict[str, Any]:
        record = self.model_dump(exclude_none=True, exclude={"meta"})
        record.update(self.meta)
        return record
