"""LoRA: target patterns on the three tiny architectures, merge, save and load."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftModel
from transformers.pytorch_utils import Conv1D

from expunge.errors import ModelError
from expunge.models.lora import (
    LoraSettings,
    adapter_output_bases,
    attach_lora,
    constrain_outside,
    linear_module_names,
    load_adapter,
    match_modules,
    merge_lora,
    release_constraints,
    save_adapter,
    state_fingerprint,
    trainable_parameter_count,
)
from expunge.models.tiny import ARCHITECTURES, tiny_model

ALL_ARCHS = pytest.mark.parametrize("tiny", ARCHITECTURES, indirect=True)

# Default-ish targets that exist in each architecture.
TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def arch_of(model) -> str:
    return {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2", "Qwen2ForCausalLM": "qwen2"}[
        type(model).__name__
    ]


def lora_targets(peft_model) -> list[str]:
    """Names (relative to the base model) of the modules that got a LoRA adapter."""
    names = []
    for name, _ in peft_model.named_modules():
        if name.endswith(".lora_A"):
            names.append(name.removeprefix("base_model.model.").removesuffix(".lora_A"))
    return sorted(names)


def sample_ids(model, batch: int = 2, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(4, model.config.vocab_size, (batch, length), generator=generator)


@torch.no_grad()
def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=input_ids).logits.detach().clone()


@torch.no_grad()
def perturb_lora(peft_model, seed: int = 0, scale: float = 0.3) -> None:
    """LoRA B starts at zero (adapter = identity); give it random values."""
    generator = torch.Generator().manual_seed(seed)
    touched = 0
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
            touched += 1
    assert touched > 0


def adapted(arch: str, settings: LoraSettings | None = None):
    model, tokenizer = tiny_model(arch, seed=0)
    peft_model = attach_lora(model, settings or LoraSettings(targets=TARGETS[arch], dropout=0.0))
    perturb_lora(peft_model)
    peft_model.eval()
    return peft_model, tokenizer


# --- matching -----------------------------------------------------------------------------


@ALL_ARCHS
def test_suffix_patterns(tiny):
    model, _ = tiny
    arch = arch_of(model)
    suffixes = tuple("." + t for t in TARGETS[arch])
    expected = sorted(n for n in linear_module_names(model) if n.endswith(suffixes))
    peft_model = attach_lora(model, LoraSettings(targets=TARGETS[arch]))
    assert isinstance(peft_model, PeftModel)
    assert lora_targets(peft_model) == expected
    assert len(expected) == (8 if arch == "gpt2" else 4)  # 2 layers; c_proj is attn and mlp


@ALL_ARCHS
def test_dotted_suffix_pattern(tiny):
    model, _ = tiny
    pattern = "mlp.c_proj" if arch_of(model) == "gpt2" else "mlp.down_proj"
    matched = match_modules(model, [pattern])
    assert len(matched) == 2
    assert all(name.endswith("." + pattern) for name in matched)


@ALL_ARCHS
def test_regex_patterns(tiny):
    model, _ = tiny
    if arch_of(model) == "gpt2":
        patterns = [r"re:transformer\.h\.1\.mlp\..*"]
        expected = ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
    else:
        patterns = [r"re:model\.layers\.[1]\.(self_attn\.o_proj|mlp\.down_proj)"]
        expected = ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]
    assert sorted(match_modules(model, patterns)) == expected
    peft_model = attach_lora(model, LoraSettings(targets=patterns))
    assert lora_targets(peft_model) == expected


@ALL_ARCHS
def test_all_linear_skips_the_output_head(tiny):
    model, _ = tiny
    expected = sorted(n for n in linear_module_names(model) if n != "lm_head")
    peft_model = attach_lora(model, LoraSettings(targets=["all-linear"]))
    targets = lora_targets(peft_model)
    assert "lm_head" not in targets
    assert targets == expected
    assert len(targets) == (8 if arch_of(model) == "gpt2" else 14)


def test_regex_is_a_full_match(tiny):
    model, _ = tiny
    with pytest.raises(ModelError):
        match_modules(model, ["re:q_proj"])  # the full name is model.layers.N.self_attn.q_proj


def test_suffix_matches_whole_name_components_only(tiny):
    model, _ = tiny
    with pytest.raises(ModelError):
        match_modules(model, ["proj"])


def test_overlapping_patterns_are_deduplicated(tiny):
    model, _ = tiny
    matched = match_modules(model, ["q_proj", r"re:.*\.q_proj", "all-linear"])
    assert len(matched) == len(set(matched)) == 14
    assert matched[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


@pytest.mark.parametrize(
    ("arch", "pattern", "available", "suggestion"),
    [
        ("gpt2", "q_proj", ["c_attn", "c_fc", "c_proj"], None),
        ("llama", "qproj", ["q_proj", "k_proj", "down_proj", "gate_proj"], "'q_proj'"),
        ("qwen2", "c_attn", ["q_proj", "v_proj", "up_proj"], None),
    ],
)
def test_pattern_matching_nothing_lists_available_names(arch, pattern, available, suggestion):
    model, _ = tiny_model(arch)
    with pytest.raises(ModelError) as info:
        attach_lora(model, LoraSettings(targets=["all-linear", pattern]))
    message = str(info.value)
    assert repr(pattern) in message
    assert type(model).__name__ in message
    listed = message.split("named: ")[1]
    for name in available:
        assert name in listed
    if suggestion:
        assert f"did you mean {suggestion}" in message
    # The failed attach left the model untouched.
    assert not any("lora" in name for name, _ in model.named_modules())


def test_gpt2_conv1d_uses_fan_in_fan_out():
    model, _ = tiny_model("gpt2")
    assert isinstance(model.get_submodule("transformer.h.0.attn.c_attn"), Conv1D)
    peft_model = attach_lora(model, LoraSettings(targets=["c_attn"]))
    assert peft_model.peft_config["default"].fan_in_fan_out is True
    llama = attach_lora(tiny_model("llama")[0], LoraSettings(targets=["q_proj"]))
    assert llama.peft_config["default"].fan_in_fan_out is False


@ALL_ARCHS
def test_only_lora_parameters_train(tiny):
    model, _ = tiny
    total_before = sum(p.numel() for p in model.parameters())
    settings = LoraSettings(targets=TARGETS[arch_of(model)], r=4, alpha=8)
    peft_model = attach_lora(model, settings)
    trainable, total = trainable_parameter_count(peft_model)
    lora = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora
    assert trainable == sum(p.numel() for _, p in lora)
    assert total == total_before + trainable
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    assert peft_model.peft_config["default"].r == 4
    assert peft_model.peft_config["default"].lora_alpha == 8


@ALL_ARCHS
def test_fresh_adapter_is_the_identity(tiny):
    model, _ = tiny
    ids = sample_ids(model)
    before = logits_of(model, ids)
    peft_model = attach_lora(model, LoraSettings(targets=TARGETS[arch_of(model)]))
    torch.testing.assert_close(logits_of(peft_model, ids), before, atol=1e-6, rtol=0)


# --- merge --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("targets", ["arch", "all-linear"])
def test_merge_gives_the_same_logits(arch, targets):
    base_logits = logits_of(tiny_model(arch, seed=0)[0], sample_ids(tiny_model(arch)[0]))
    settings = LoraSettings(
        targets=TARGETS[arch] if targets == "arch" else ["all-linear"], dropout=0.0
    )
    peft_model, _ = adapted(arch, settings)
    ids = sample_ids(peft_model)
    with_adapter = logits_of(peft_model, ids)
    # The perturbed adapter really changes the model...
    assert (with_adapter - base_logits).abs().max() > 1e-2
    merged = merge_lora(peft_model)
    assert not isinstance(merged, PeftModel)
    assert arch_of(merged) == arch
    assert not any("lora" in name for name, _ in merged.named_modules())
    # ...and merging keeps exactly that change.
    torch.testing.assert_close(logits_of(merged, ids), with_adapter, atol=1e-5, rtol=1e-5)


def test_merge_lora_passes_a_plain_model_through(tiny):
    model, _ = tiny
    assert merge_lora(model) is model


# --- save / load --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_adapter_round_trip(arch, tmp_path):
    peft_model, _ = adapted(arch)
    ids = sample_ids(peft_model)
    expected = logits_of(peft_model, ids)
    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("*.bin"))

    fresh, _ = tiny_model(arch, seed=0)
    loaded = load_adapter(fresh, tmp_path / "adapter")
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(logits_of(loaded, ids), expected, atol=0, rtol=0)
    assert all(not p.requires_grad for p in loaded.parameters())


def test_load_adapter_trainable(tmp_path):
    peft_model, _ = adapted("llama")
    save_adapter(peft_model, tmp_path)
    loaded = load_adapter(tiny_model("llama")[0], tmp_path, trainable=True)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n for n in trainable)


def test_load_adapter_onto_another_base_differs(tmp_path):
    """Sanity check of the round trip: another base model gives other logits."""
    peft_model, _ = adapted("llama")
    ids = sample_ids(peft_model)
    save_adapter(peft_model, tmp_path)
    other = load_adapter(tiny_model("llama", seed=1)[0], tmp_path)
    assert (logits_of(other, ids) - logits_of(peft_model, ids)).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\0" * 16),
         "adapter_model.safetensors: not a readable safetensors file"),
        (lambda d: (d / "adapter_config.json").write_text('{"r": 8,'),
         "adapter_config.json: not valid JSON"),
    ],
)  # fmt: skip
def test_a_damaged_adapter_is_named_not_a_traceback(damage, named, tmp_path):
    """A cut copy or an interrupted download of an adapter is one ModelError naming the file."""
    save_adapter(adapted("llama")[0], tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelError, match=named):
        load_adapter(tiny_model("llama")[0], tmp_path)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adapter_from_another_hidden_size(arch, tmp_path):
    peft_model, _ = adapted(arch)
    save_adapter(peft_model, tmp_path)
    wider, _ = tiny_model(arch, hidden=64)
    before = state_fingerprint(wider)
    with pytest.raises(ModelError) as info:
        load_adapter(wider, tmp_path)
    message = str(info.value)
    assert "does not fit" in message
    shapes = re.findall(r"\((\d+), (\d+)\)", message)
    assert ("8", "32") in shapes  # the adapter's lora_A (r x hidden=32)
    assert ("8", "64") in shapes  # what the wider model needs
    assert state_fingerprint(wider) == before


def test_adapter_from_another_architecture(tmp_path):
    peft_model, _ = adapted("gpt2")
    save_adapter(peft_model, tmp_path)
    with pytest.raises(ModelError, match="does not have"):
        load_adapter(tiny_model("llama")[0], tmp_path)


def test_directory_without_adapter_config(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"adapter_config\.json"):
        load_adapter(tiny_model("llama")[0], tmp_path)


def test_adapter_with_only_pickle_weights(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="safetensors"):
        load_adapter(tiny_model("llama")[0], tmp_path)


def test_state_fingerprint_sees_changes(tiny):
    model, _ = tiny
    before = state_fingerprint(model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    after = state_fingerprint(model)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["lm_head.weight"]


# --- a LoRA update kept outside an earlier adapter's output space --------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_constrained_update_has_no_component_in_the_earlier_adapters_span(arch, tmp_path):
    first, _ = adapted(arch)
    save_adapter(first, tmp_path / "first")
    merged = merge_lora(first)
    reference = {n: m.weight.detach().clone() for n, m in merged.named_modules()
                 if isinstance(m, (torch.nn.Linear, Conv1D)) and n}  # fmt: skip
    bases = adapter_output_bases(tmp_path / "first")
    second = attach_lora(merged, LoraSettings(targets=TARGETS[arch], dropout=0.0))
    constrained = constrain_outside(second, bases)
    assert sorted(constrained) == sorted(bases)
    # Adam's per-element scaling is what would leak a projected gradient back into the span
    optimizer = torch.optim.Adam([p for p in second.parameters() if p.requires_grad], lr=0.05)
    ids = sample_ids(second)
    for _ in range(3):
        loss = second(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    release_constraints(second)
    assert not any("parametrizations" in n for n, _ in second.named_parameters())
    save_adapter(second, tmp_path / "second")  # plain keys again: saves and loads
    final = merge_lora(second)
    moved = 0.0
    for name, basis in bases.items():
        module = final.get_submodule(name)
        old = reference[name]
        delta = module.weight.detach() - old
        delta = delta.T if isinstance(module, Conv1D) else delta
        moved += float(delta.abs().max())
        assert float((basis.T @ delta).abs().max()) < 1e-5 * max(1.0, float(delta.abs().max()))
    assert moved > 1e-3  # it did train


def test_unconstrained_update_can_enter_the_span(tmp_path):
    """The check above can fail: without the constraint the update does enter span(B)."""
    first, _ = adapted("llama")
    save_adapter(first, tmp_path / "first")
    merged = merge_lora(first)
    name, basis = next(iter(adapter_output_bases(tmp_path / "first").items()))
    old = merged.get_submodule(name).weight.detach().clone()
    second = attach_lora(merged, LoraSettings(targets=TARGETS["llama"], dropout=0.0))
    perturb_lora(second, seed=3)
    delta = merge_lora(second).get_submodule(name).weight.detach() - old
    assert float((basis.T @ delta).abs().max()) > 1e-3


def test_basis_has_the_rank_of_b_and_skips_untouched_layers(tmp_path):
    peft_model = attach_lora(tiny_model("llama")[0], LoraSettings(targets=["q_proj"], r=4))
    names = lora_targets(peft_model)
    with torch.no_grad():
        first = peft_model.base_model.model.get_submodule(names[0]).lora_B["default"].weight
        first.copy_(torch.outer(torch.arange(1.0, first.shape[0] + 1), torch.ones(4)))  # rank 1
    save_adapter(peft_model, tmp_path)
    bases = adapter_output_bases(tmp_path)
    assert list(bases) == [names[0]]  # the other layers' B is still zero: nothing to avoid
    assert bases[names[0]].shape == (first.shape[0], 1)
    direction = first.detach()[:, 0] / first.detach()[:, 0].norm()
    assert float((bases[names[0]][:, 0].abs() - direction.abs()).abs().max()) < 1e-6


def test_constraint_on_a_layer_of_another_size(tmp_path):
    first, _ = adapted("llama")
    save_adapter(first, tmp_path / "first")
    bases = adapter_output_bases(tmp_path / "first")
    name = next(iter(bases))
    bases[name] = torch.eye(bases[name].shape[0] + 1)[:, :2]
    second = attach_lora(tiny_model("llama")[0], LoraSettings(targets=TARGETS["llama"]))
    with pytest.raises(ModelError, match="differs from the reference adapter"):
        constrain_outside(second, bases)
