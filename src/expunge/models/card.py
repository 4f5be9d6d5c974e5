"""Model cards: the ``README.md`` beside every model directory expunge saves.

A Hugging Face card (YAML front matter + Markdown, built with ``huggingface_hub``'s
``ModelCard``/``ModelCardData``) says what the weights are: the base model, what was implanted
or erased and how, and a summary of the run record. It never holds the imprint — no key,
response, trigger, record or forget-set text — because a card is written to be shared:

- only the imprint's ``summary()`` (kind, scheme, counts) and the record's numbers and names
  (command, method, seed, versions, numeric metrics) are used, never its config, argv or details;
- then every string of the imprint (as the report's redactor collects them) and any extra
  ``secrets`` are blanked from the whole text, in case a method or metric name carries one.

Lineage: a model saved from another expunge model directory inherits that card's base model,
license and history (``expunge.history``), so an erased model still names the hub model at the
root and says it was implanted first. The embedded default is stated for what it is: a
dequantized Q4_1 GGUF of SmolLM2-135M-Instruct, not the original weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expunge.files import atomic_write_text
from expunge.lazy import lazy
from expunge.models.embedded import EMBEDDED_BASES, embedded_name, provenance
from expunge.report.redact import REDACTED, Redactor, secret_strings

hub = lazy("huggingface_hub")  # its ModelCard; loaded when a card is written (expunge.lazy)
CARD_FILE = "README.md"
EMBEDDED_LICENSE = "apache-2.0"  # SmolLM2's license; the GGUF repackaging keeps it
VERSION_KEYS = ("expunge", "torch", "transformers", "peft", "accelerate")
MAX_METRICS = 40  # a card is a summary; the record has the rest

TEMPLATE = """---
{{ card_data }}
---

{{ body }}
"""


@dataclass
class CardInfo:
    """What the saving run knows about the model; every field is optional.

    ``imprint`` (an ``Imprint`` or its dict) gives the summary shown and the strings blanked;
    ``record`` (a ``RunRecord`` or its dict) gives command, method, seed, versions and numeric
    metrics; ``secrets`` are more strings that must not appear.
    """

    command: str | None = None  # "implant fingerprint", "erase meraser", "finetune"...
    method: str | None = None
    base_model: str | None = None  # what the weights were trained from (name, path or hub id)
    imprint: Any = None
    record: Any = None
    secrets: Iterable[str] = field(default_factory=tuple)


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else {}


def _imprint_summary(imprint: Any, record: dict[str, Any]) -> dict[str, Any]:
    summary = getattr(imprint, "summary", None)
    if callable(summary):
        return dict(summary())
    inputs = record.get("inputs") or {}
    if isinstance(inputs.get("imprint_summary"), dict):
        return dict(inputs["imprint_summary"])
    data = _as_dict(imprint)
    return {k: data[k] for k in ("kind", "scheme") if isinstance(data.get(k), str)}


def _parent_card(base: str | None) -> dict[str, Any]:
    """Front matter of the card in a local base model directory, if it has one."""
    if not base:
        return {}
    path = Path(base).expanduser() / CARD_FILE
    if not path.is_file():
        return {}
    try:
        return hub.ModelCard.load(path).data.to_dict()
    except Exception:  # a hand-written README that is not a card: nothing to inherit
        return {}


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _step(info: CardInfo, record: dict[str, Any], imprint: dict[str, Any]) -> dict[str, Any]:
    config = record.get("config") or {}
    command = info.command or record.get("command") or "save"
    method = info.method or (
        config.get("method") if isinstance(config.get("method"), str) else None
    )
    step: dict[str, Any] = {"command": command}
    if method:
        step["method"] = method
    if imprint:
        step["imprint"] = imprint
    return step


def _describe(step: dict[str, Any]) -> str:
    command, method, imprint = step.get("command", ""), step.get("method"), step.get("imprint")
    what = ", ".join(
        f"{k} {v}" for k, v in (imprint or {}).items() if k != "kind" and v not in (None, [], {})
    )
    kind = (imprint or {}).get("kind", "imprint")
    verb = command.split()[0] if command else "save"
    if verb == "implant":
        text = f"**implanted** a {kind} ({what})" if what else f"**implanted** a {kind}"
    elif verb == "erase":
        text = f"**erased** a {kind} with `{method or command}`" + (f" ({what})" if what else "")
    else:
        text = f"`{command}`" + (f" with `{method}`" if method else "")
    return text


def _short(step: dict[str, Any]) -> str:
    command, method = step.get("command", "save"), step.get("method")
    kind = (step.get("imprint") or {}).get("kind")
    text = command + (f" {method}" if method and method not in command.split() else "")
    return text + (f" ({kind})" if kind else "")


def _metrics(record: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    for key, value in (record.get("metrics") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((str(key), float(value)))
    return out[:MAX_METRICS]


def model_card(
    base_model: str | None = None,
    info: CardInfo | None = None,
    pipeline_tag: str | None = None,
    name: str | None = None,
) -> str:
    """The card's text (front matter + Markdown) for a model trained from ``base_model``."""
    info = info or CardInfo()
    record = _as_dict(info.record)
    base = info.base_model or base_model
    parent = _parent_card(base)
    history = list((parent.get("expunge") or {}).get("history") or [])
    imprint = _imprint_summary(info.imprint, record)
    step = _step(info, record, imprint)
    history.append(step)

    embedded = embedded_name(base) if base else None
    hub_base = parent.get("base_model")
    if embedded:
        hub_base = EMBEDDED_BASES[embedded]
    elif base and _is_hub_id(base):
        hub_base = base
    license_ = parent.get("license") or (EMBEDDED_LICENSE if embedded else None)
    source = (parent.get("expunge") or {}).get("source") or (
        provenance(embedded) if embedded else None
    )

    kinds = [
        s["imprint"]["kind"]
        for s in history
        if isinstance(s.get("imprint"), dict) and s["imprint"].get("kind")
    ]
    verbs = [s["command"].split()[0] for s in history if s.get("command")]
    tags = list(
        dict.fromkeys(
            ["expunge", *kinds, *verbs, *[s["method"] for s in history if s.get("method")]]
        )
    )
    data = hub.ModelCardData(
        base_model=hub_base, library_name="transformers", license=license_,
        pipeline_tag=pipeline_tag, tags=tags, model_name=name,
        expunge={"history": history, **({"source": source} if source else {})},
    )  # fmt: skip

    lines = [f"# {name or ('Model saved by expunge: ' + _short(history[-1]))}", ""]
    lines.append(
        "Saved by expunge, which takes imprints "
        "(fingerprints, backdoors, memorized secrets, knowledge) out of language models and "
        "audits them."
    )
    lines += ["", "## Base model", ""]
    if hub_base:
        lines.append(f"`{hub_base}`" + ("" if not parent else " (through the steps below)."))
    else:
        lines.append("A local model (its path is not recorded here).")
    if source:
        lines += [
            "",
            f"**Provenance:** {source}. Its behaviour can differ from the original release.",
        ]
    lines += ["", "## What was done", ""]
    lines += [f"{i}. {_describe(s)}" for i, s in enumerate(history, 1)]
    lines += ["", "## Run record (summary)", ""]
    summary = [("command", step["command"])]
    for key in ("status", "seed", "device", "world_size", "wall_time_s"):
        if record.get(key) is not None:
            summary.append((key, str(record[key])))
    commit = (record.get("git") or {}).get("commit")
    if commit:
        summary.append(("expunge git commit", commit))
    versions = record.get("versions") or {}
    if versions:
        summary.append(
            ("versions", ", ".join(f"{k} {versions[k]}" for k in VERSION_KEYS if k in versions))
        )
    lines += ["| field | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in summary]]
    metrics = _metrics(record)
    if metrics:
        lines += [
            "",
            "| metric | value |",
            "|---|---:|",
            *[f"| {k} | {v:.4g} |" for k, v in metrics],
        ]
    lines += [
        "",
        "The imprint itself (keys, responses, triggers, records, forget set) is not in this "
        "card: it stays in the run's `imprint.json`, readable by its owner only. The full record "
        "is the run's `record.json`.",
    ]
    card = hub.ModelCard.from_template(data, template_str=TEMPLATE, body="\n".join(lines))
    secrets = [*secret_strings(_as_dict(info.imprint)), *[s for s in info.secrets if s]]
    return Redactor(secrets)(str(card)) if secrets else str(card)


def model_provenance(path: str | Path) -> str | None:
    """What the weights at ``path`` really are, when expunge knows: the embedded model's
    provenance, or the ``source`` a model card inherited from it; None otherwise."""
    name = embedded_name(str(path))
    if name is not None:
        return provenance(name)
    source = (_parent_card(str(path)).get("expunge") or {}).get("source")
    return str(source) if source else None


def write_model_card(
    directory: str | Path, model: Any = None, info: CardInfo | None = None
) -> Path:
    """Write ``directory/README.md`` for the model saved there; the base model and pipeline tag
    come from ``model.config`` when ``info`` does not name them."""
    config = getattr(model, "config", None)
    base = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        tag = "text-classification"
    elif any(a.endswith("ForCausalLM") for a in architectures):
        tag = "text-generation"
    else:
        tag = None
    path = Path(directory) / CARD_FILE
    # the card of the directory being overwritten is not a parent
    if base and Path(base).expanduser().resolve() == Path(directory).resolve():
        base = None
    text = model_card(base, info, pipeline_tag=tag)
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path


__all__ = ["CARD_FILE", "REDACTED", "CardInfo", "model_card", "model_provenance",
           "write_model_card"]  # fmt: skip
