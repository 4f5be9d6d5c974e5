"""What the loop reads from an FSDP launch on CPU processes (expunge.train.cpu_fsdp).

The sharded training itself runs in tests/test_multiprocess.py (two gloo processes)."""

from __future__ import annotations

import pytest

from expunge.errors import ConfigError
from expunge.models.tiny import tiny_model
from expunge.train import cpu_fsdp


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, True),
        ({"FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, True),
        ({"FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, False),
        ({"FSDP_SHARDING_STRATEGY": "2"}, False),  # accelerate's numeric form
        ({"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}, False),
        ({"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}, True),
    ],
)  # fmt: skip
def test_sharding_strategy_decides_resharding(monkeypatch, env: dict, expected: bool) -> None:
    for key in ("FSDP_VERSION", "FSDP_SHARDING_STRATEGY", "FSDP_RESHARD_AFTER_FORWARD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cpu_fsdp._reshard_after_forward() is expected


def test_strategies_that_do_not_shard_are_refused(monkeypatch) -> None:
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "NO_SHARD")
    with pytest.raises(ConfigError, match=r"cpu_2proc\.yaml"):
        cpu_fsdp._reshard_after_forward()


def test_blocks_come_from_the_model_or_the_launch(monkeypatch) -> None:
    model, _ = tiny_model("llama", seed=0)
    monkeypatch.delenv("FSDP_AUTO_WRAP_POLICY", raising=False)
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    assert cpu_fsdp._block_classes(model) == {"LlamaDecoderLayer"}
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "GPT2Block")
    with pytest.raises(ConfigError, match="fsdp_transformer_layer_cls_to_wrap"):
        cpu_fsdp._block_classes(model)
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "NO_WRAP")
    assert cpu_fsdp._block_classes(model) == set()
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP")
    with pytest.raises(ConfigError, match="TRANSFORMER_BASED_WRAP"):
        cpu_fsdp._block_classes(model)


def test_parameter_offload_is_refused(monkeypatch) -> None:
    model, _ = tiny_model("llama", seed=0)
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(ConfigError, match="fsdp_offload_params"):
        cpu_fsdp.shard(model)
