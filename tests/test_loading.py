"""Model loading: path resolution errors, safetensors only, tiny round trips."""

from __future__ import annotations

import json

import pytest
import torch

from expunge.errors import ModelError
from expunge.models.loading import (
    LoadedModel,
    ensure_pad_token,
    load_model,
    load_tokenizer,
    resolve_model_path,
    save_model,
)
from expunge.models.tiny import ARCHITECTURES, save_tiny_model, tiny_model, tiny_tokenizer


def test_a_file_is_not_a_model_directory(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_path(str(path))


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


def test_adapter_directory_is_not_a_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="LoRA adapter"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt"])
def test_pickle_weights_are_refused(tmp_path, weights):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / weights).write_bytes(b"pickle would run code")
    with pytest.raises(ModelError) as info:
        resolve_model_path(str(tmp_path))
    assert "safetensors" in str(info.value)
    assert "pickle" in str(info.value)


def test_config_without_any_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no \*\.safetensors"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize(
    "spec", ["./no_such_model_dir", "/no/such/model/dir", "~/no_such_model_dir_xyz", "a/b/c"]
)
def test_nonexistent_local_path(spec):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(spec)


def test_hub_id_is_passed_through_unresolved():
    # Resolution only classifies: nothing is downloaded here.
    assert resolve_model_path("someorg/some-model") == "someorg/some-model"


def test_model_directory_resolves_to_absolute_path(tmp_path, monkeypatch):
    save_tiny_model(tmp_path / "tiny", "llama")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("./tiny") == str((tmp_path / "tiny").resolve())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_model_from_saved_tiny_model(arch, tmp_path):
    path = save_tiny_model(tmp_path / arch, arch=arch, seed=0)
    loaded = load_model(str(path), dtype="float32", device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == str(path)
    assert loaded.path == str(path.resolve())
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())

    reference, reference_tokenizer = tiny_model(arch, seed=0)
    assert type(loaded.model) is type(reference)
    ids = torch.randint(4, reference.config.vocab_size, (2, 10), generator=torch.manual_seed(0))
    loaded.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=0, rtol=0
        )

    tokenizer = loaded.tokenizer
    text = "the doctor lives north"
    assert tokenizer(text)["input_ids"] == reference_tokenizer(text)["input_ids"]
    assert tokenizer.pad_token_id == reference_tokenizer.pad_token_id
    assert tokenizer.eos_token_id == reference_tokenizer.eos_token_id
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert loaded.model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert loaded.model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert loaded.model.config.pad_token_id == tokenizer.pad_token_id


def test_load_model_refuses_bad_directory(tmp_path):
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(str(tmp_path), dtype="float32", device="cpu")


def test_save_model_round_trip(tmp_path):
    model, tokenizer = tiny_model("gpt2", seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # a change the seed alone would not reproduce
    save_model(model, tokenizer, tmp_path / "saved")
    assert list((tmp_path / "saved").glob("*.safetensors"))
    assert not list((tmp_path / "saved").glob("*.bin"))
    loaded = load_model(str(tmp_path / "saved"), dtype="float32", device="cpu")
    for name, param in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], param, atol=0, rtol=0)


def test_load_tokenizer_from_saved_model(tmp_path):
    path = save_tiny_model(tmp_path / "tiny", "qwen2")
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.pad_token == "<|pad|>"


def test_ensure_pad_token_falls_back_to_eos():
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_ensure_pad_token_needs_pad_or_eos():
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    with pytest.raises(ModelError, match="neither a pad nor an eos"):
        ensure_pad_token(tokenizer)
