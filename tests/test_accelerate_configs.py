"""The accelerate configs in configs/accelerate/ parse, say what they claim, and launch.

``accelerate`` reads each file the way ``accelerate launch --config_file`` does; the launcher's
own argument handling then turns it into the environment the training processes would get
(without starting them: most of these need GPUs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
GPU_CONFIGS = ("ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml")
ALL_CONFIGS = (*GPU_CONFIGS, "cpu_2proc.yaml", "cpu_fsdp_2proc.yaml")


def test_the_expected_configs_exist() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_parses_and_says_how_to_use_it(name: str) -> None:
    text = (CONFIGS / name).read_text()
    assert isinstance(yaml.safe_load(text), dict)
    header = text.split("\ncompute_environment:")[0]
    assert "accelerate launch --config_file configs/accelerate/" + name in header
    config = load_config_from_file(str(CONFIGS / name))
    assert config.num_machines == 1
    assert config.num_processes >= 2
    if name in GPU_CONFIGS:
        assert "GPU count" in text and "num_processes" in header
        assert config.mixed_precision == "bf16" and not config.use_cpu


def test_ddp() -> None:
    config = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU


def test_fsdp_full_shard_with_original_params_and_full_state_dict() -> None:
    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 1
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_use_orig_params"] is True  # LoRA and partial freezing need it


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero(stage: int) -> None:
    config = load_config_from_file(str(CONFIGS / f"deepspeed_zero{stage}.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    ds = config.deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["gradient_accumulation_steps"] == 1  # the loop accumulates itself
    assert "gradient_clipping" not in ds  # the loop sets it from train.max_grad_norm
    assert ds.get("zero3_save_16bit_model", False) is (stage == 3)


def test_cpu_config_starts_two_cpu_processes() -> None:
    config = load_config_from_file(str(CONFIGS / "cpu_2proc.yaml"))
    # MULTI_GPU selects accelerate's multi-process launcher; use_cpu keeps it off the GPUs.
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.use_cpu is True and config.num_processes == 2
    assert config.mixed_precision == "no"


def test_cpu_fsdp_config_asks_for_fsdp_on_two_cpu_processes() -> None:
    config = load_config_from_file(str(CONFIGS / "cpu_fsdp_2proc.yaml"))
    # the loop shards CPU processes itself (expunge.train.cpu_fsdp) from what this asks for
    assert config.distributed_type == DistributedType.FSDP
    assert config.use_cpu is True and config.num_processes == 2
    assert config.mixed_precision == "no"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_sync_module_states"] is False  # accelerate refuses it without a GPU


def launcher_env(name: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file NAME`` gives its processes."""
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
    except ImportError as err:  # private helpers of the installed accelerate
        pytest.skip(f"accelerate's launcher internals moved: {err}")
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # What launch_command sets before building the DeepSpeed environment.
        fields = [*defaults.deepspeed_config, "mixed_precision"]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ddp.yaml", {"ACCELERATE_MIXED_PRECISION": "bf16"}),
        ("cpu_2proc.yaml", {"ACCELERATE_MIXED_PRECISION": "no"}),
        ("fsdp.yaml", {
            "ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_USE_ORIG_PARAMS": "true",
        }),
        ("cpu_fsdp_2proc.yaml", {
            "ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "ACCELERATE_MIXED_PRECISION": "no",
        }),
        ("deepspeed_zero2.yaml", {
            "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_MIXED_PRECISION": "bf16",
        }),
        ("deepspeed_zero3.yaml", {
            "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
            "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_MIXED_PRECISION": "bf16",
        }),
    ],
)  # fmt: skip
def test_accelerate_launch_reads_the_config(name: str, expected: dict[str, str]) -> None:
    env = launcher_env(name)
    assert {key: env.get(key) for key in expected} == expected
