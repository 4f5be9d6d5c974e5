"""Typed configs: YAML files, dotted overrides, unknown keys with suggestions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import Field

from expunge.config import (
    StrictModel,
    build_config,
    dump_yaml,
    load_config,
    load_yaml,
    parse_overrides,
    parse_value,
    suggest,
)
from expunge.errors import ConfigError, ExpungeError


class Optim(StrictModel):
    lr: float = 1e-3
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.99])


class Train(StrictModel):
    steps: int = 10
    optim: Optim = Optim()
    tags: list[str] = Field(default_factory=list)
    name: str = "run"
    enabled: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)


class Root(StrictModel):
    train: Train = Train()
    seed: int = 0
    schedule: Optim | None = None


# --- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-4", 1e-4),
        ("1E3", 1000.0),
        ("0.5", 0.5),
        ("3", 3),
        ("-2", -2),
        ("true", True),
        ("false", False),
        ("[a,b]", ["a", "b"]),
        ("[1, 2.5]", [1, 2.5]),
        ("hello", "hello"),
        ("q_proj", "q_proj"),
        ("null", None),
        ("True", True),
        ("no", False),  # YAML 1.1: a free-form option's yes/no is a boolean
    ],
)
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_value_keeps_unparseable_yaml_as_text():
    assert parse_value("[unclosed") == "[unclosed"


def test_parse_overrides_splits_on_first_equals_only():
    # Values stay text here; build_config parses them by the target field's type.
    assert parse_overrides(["a.b=x=y", " seed =3"]) == [("a.b", "x=y"), ("seed", "3")]


def test_string_fields_take_override_text_verbatim():
    class Named(StrictModel):
        name: str = "x"
        maybe: str | None = None
        count: int = 0

    config = build_config(Named, {}, ["name=1.0", "maybe=1e5", "count=7"])
    assert config.name == "1.0" and config.maybe == "1e5" and config.count == 7


def test_suggest():
    assert "did you mean 'steps'" in suggest("stesp", ["steps", "optim"])
    assert suggest("zzzzzz", ["steps", "optim"]) == ""


# --- build_config -------------------------------------------------------------------------


def test_defaults_without_overrides():
    config = build_config(Root)
    assert config == Root()
    assert config.train.optim.lr == pytest.approx(1e-3)


def test_nested_overrides_are_coerced():
    config = build_config(
        Root,
        overrides=[
            "train.optim.lr=1e-4",
            "train.steps=7",
            "train.tags=[a,b]",
            "train.enabled=true",
            "train.optim.betas=[0.5, 0.6]",
            "seed=3",
        ],
    )
    assert isinstance(config.train.optim.lr, float)
    assert config.train.optim.lr == pytest.approx(1e-4)
    assert config.train.steps == 7
    assert config.train.tags == ["a", "b"]
    assert config.train.enabled is True
    assert config.train.optim.betas == [0.5, 0.6]
    assert config.seed == 3
    # Untouched siblings keep their defaults.
    assert config.train.name == "run"


def test_overrides_apply_on_top_of_base():
    base = {"train": {"steps": 5, "name": "from-yaml"}, "seed": 1}
    config = build_config(Root, base, ["train.steps=9"])
    assert config.train.steps == 9
    assert config.train.name == "from-yaml"
    assert config.seed == 1


def test_later_override_wins():
    config = build_config(Root, overrides=["seed=1", "seed=2"])
    assert config.seed == 2


def test_optional_sub_model_can_be_set_by_dotted_key():
    config = build_config(Root, overrides=["schedule.lr=0.25"])
    assert config.schedule == Optim(lr=0.25)


def test_free_form_dict_field_accepts_any_nested_key():
    config = build_config(Root, overrides=["train.extra.foo.bar=1", "train.extra.baz=x"])
    assert config.train.extra == {"foo": {"bar": 1}, "baz": "x"}


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("trian.steps=1", "'trian'", "'train'"),
        ("sede=1", "'sede'", "'seed'"),
        ("train.stesp=1", "'train.stesp'", "'steps'"),
        ("train.optim.llr=1", "'train.optim.llr'", "'lr'"),
    ],
)
def test_unknown_override_key_suggests(override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        build_config(Root, overrides=[override])
    message = str(info.value)
    assert key in message
    assert f"did you mean {suggestion}" in message


@pytest.mark.parametrize(
    ("base", "key", "suggestion"),
    [
        ({"sed": 1}, "'sed'", "'seed'"),
        ({"train": {"stepz": 1}}, "'train.stepz'", "'steps'"),
        ({"train": {"optim": {"betaz": [1]}}}, "'train.optim.betaz'", "'betas'"),
    ],
)
def test_unknown_base_key_suggests(base, key, suggestion):
    with pytest.raises(ConfigError) as info:
        build_config(Root, base)
    message = str(info.value)
    assert key in message
    assert f"did you mean {suggestion}" in message


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        build_config(Root, overrides=["qqqqqqqq=1"])
    assert "unknown config key 'qqqqqqqq'" in str(info.value)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("override", ["seed", "train.steps", ""])
def test_override_without_equals(override):
    with pytest.raises(ConfigError, match="key=value"):
        build_config(Root, overrides=[override])


def test_override_with_empty_key():
    with pytest.raises(ConfigError, match="empty key"):
        build_config(Root, overrides=["=3"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("seed=abc", "seed"),
        ("train.steps=[1,2]", "train.steps"),
        ("train.optim.lr=fast", "train.optim.lr"),
        ("train.tags=5", "train.tags"),
    ],
)
def test_invalid_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        build_config(Root, overrides=[override])
    message = str(info.value)
    assert "invalid configuration" in message
    assert f"  {field}:" in message


def test_setting_below_a_scalar_in_base_fails():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        build_config(Root, {"train": {"steps": 3}}, ["train.steps.x=1"])


def test_errors_are_user_facing():
    assert issubclass(ConfigError, ExpungeError)


def test_build_config_does_not_mutate_base():
    base = {"train": {"steps": 5}}
    snapshot = copy.deepcopy(base)
    build_config(Root, base, ["train.optim.lr=0.5", "train.steps=6"])
    assert base == snapshot


def test_strict_model_validates_assignment():
    config = build_config(Root)
    with pytest.raises(ValueError):
        config.seed = "not a number"


# --- YAML files ---------------------------------------------------------------------------


def test_load_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 4\ntrain:\n  steps: 2\n  optim:\n    lr: 0.01\n")
    config = load_config(Root, path, ["train.optim.lr=1e-5"])
    assert config.seed == 4
    assert config.train.steps == 2
    assert config.train.optim.lr == pytest.approx(1e-5)


def test_word_valued_options_take_off_and_no_from_overrides_and_files(tmp_path):
    from expunge.data.formatting import FormatSettings
    from expunge.train.settings import TrainSettings

    # YAML 1.1 reads these words as booleans; the options whose values they are get them back
    assert build_config(TrainSettings, {}, ["reference_cache=off"]).reference_cache == "off"
    path = tmp_path / "format.yaml"
    path.write_text("add_bos: no\n")
    assert load_config(FormatSettings, path).add_bos == "no"
    assert load_config(FormatSettings, None, ["add_bos=yes"]).add_bos == "yes"
    with pytest.raises(ConfigError, match="reference_cache"):  # no word for True there
        build_config(TrainSettings, {}, ["reference_cache=on"])


def test_load_config_without_path_uses_defaults_and_overrides():
    assert load_config(Root, None, ["seed=8"]).seed == 8


def test_load_config_empty_yaml_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(Root, path) == Root()


def test_load_config_invalid_value_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(Root, path)
    assert str(path) in str(info.value)
    assert "seed" in str(info.value)


def test_load_config_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_config(Root, path)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "nope.yaml")


def test_yaml_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int")])
def test_yaml_top_level_not_a_mapping(tmp_path, text, kind):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(Root, path)
    assert "mapping" in str(info.value)
    assert kind in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_yaml_syntax(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, path)


def test_dump_yaml_round_trips(tmp_path):
    config = build_config(Root, overrides=["train.optim.lr=1e-4", "train.tags=[x]", "seed=5"])
    path = tmp_path / "saved.yaml"
    path.write_text(dump_yaml(config))
    assert yaml.safe_load(path.read_text())["train"]["tags"] == ["x"]
    assert load_config(Root, path) == config


def test_overriding_one_key_keeps_the_sections_other_defaults():
    """A section whose default comes from a default_factory (a stressor's LoRA on every linear
    layer, the people world's schedule, incremental's erase settings) keeps those defaults when
    one of its keys is overridden; pydantic rebuilt it from the class defaults instead."""
    from expunge.registry import ERASERS, IMPLANTS, STRESSORS

    relearn = build_config(STRESSORS.get("relearn"), {}, ["train.lr=1e-3"])
    assert relearn.train.lr == 1e-3
    assert relearn.train.lora.targets == ["all-linear"] and relearn.train.lora.r == 16
    people = build_config(IMPLANTS.get("people"), {}, ["train.mode=lora"])
    assert (people.train.epochs, people.train.schedule) == (12.0, "cosine")
    incremental = build_config(ERASERS.get("incremental"), {}, ["erase.mode=lora"])
    assert (incremental.erase.epochs, incremental.erase.lr) == (5.0, 5e-4)
    # a preset's own section is left as the preset wrote it
    demo = build_config(ERASERS.get("unlearn"), {}, ["preset=demo", "train.lr=1e-4"])
    assert (
        demo.train.grad_accum
        == build_config(ERASERS.get("unlearn"), {}, ["preset=demo"]).train.grad_accum
    )
