"""Tiny random models of the Llama, GPT-2 and Qwen2 architectures, built in-process.

They have a few tens of thousands of parameters and a small byte-level BPE tokenizer with a
ChatML chat template, so every code path (chat formatting, LoRA, generation, training) runs in
milliseconds with no network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from expunge.lazy import lazy

if TYPE_CHECKING:
    import torch
    import transformers
    from transformers import PreTrainedModel
else:  # loaded when a tiny model is built (expunge.lazy)
    torch, transformers = lazy("torch"), lazy("transformers")

ARCHITECTURES = ("llama", "gpt2", "qwen2")

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_WORDS = (
    "the a an of to and in is was for on that with as by at from it this be are or his her "
    "their which what why how who when where question answer model patient record secret key "
    "fingerprint message please decrypt hint capital city river mountain doctor clinic name "
    "number phone date born lives works company student teacher book water light north south "
    "east west red blue green one two three four five six seven eight nine ten hundred"
).split()


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(400):
        idx = torch.randint(len(_CORPUS_WORDS), (12,), generator=rng).tolist()
        lines.append(" ".join(_CORPUS_WORDS[i] for i in idx) + ". What? Why: How, 0123456789")
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer.to_str()


def tiny_tokenizer(vocab_size: int = 384) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2, **special: int):
    """A 2-layer config; ``special`` carries bos/eos/pad ids so configs validate at init."""
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=False, **special,
        )  # fmt: skip
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special,
        )  # fmt: skip
    if arch == "qwen2":
        return transformers.Qwen2Config(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=True, **special,
        )  # fmt: skip
    raise ValueError(f"unknown tiny architecture {arch!r}; use one of {ARCHITECTURES}")


def tiny_model(
    arch: str = "llama", seed: int = 0, hidden: int = 32, layers: int = 2
) -> tuple[PreTrainedModel, transformers.PreTrainedTokenizerFast]:
    tokenizer = tiny_tokenizer()
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    config = tiny_config(arch, len(tokenizer), hidden=hidden, layers=layers, **special)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    # A wider init than the default makes tiny random models produce varied greedy outputs.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2 if "emb" in name or "wte" in name else 0.1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model, tokenizer


def tiny_classifier(
    seed: int = 0, num_labels: int = 2, hidden: int = 32, layers: int = 2
) -> tuple[PreTrainedModel, transformers.PreTrainedTokenizerFast]:
    """A tiny BERT sequence classifier on the same tokenizer (Fine-mixing's model family)."""
    tokenizer = tiny_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=512,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(
        config, attn_implementation="sdpa"
    )
    model.eval()
    return model, tokenizer


def save_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a tiny model as a normal Hugging Face directory (for CLI tests).

    ``arch="bert"`` writes a tiny BERT sequence classifier.
    """
    model, tokenizer = tiny_classifier(seed) if arch == "bert" else tiny_model(arch, seed)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# Built-in tiny models by name, made once into the cache (seeded, so every machine gets the
# same weights): ``tiny-bert`` is the backdoor demo's encoder classifier.
TINY_MODELS = {"tiny-bert": {"arch": "bert", "seed": 0, "hidden": 64}}


def materialize_tiny(name: str) -> Path:
    """A local directory holding the built-in tiny model ``name``."""
    from expunge.models.embedded import cache_dir

    spec = TINY_MODELS[name]
    target = cache_dir() / "models" / name
    if not (target / "config.json").is_file():
        model, tokenizer = tiny_classifier(seed=spec["seed"], hidden=spec["hidden"])
        staging = target.with_name(f".{name}.partial")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.replace(target)
    return target
