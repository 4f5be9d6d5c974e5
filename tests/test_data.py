"""Examples, JSONL loaders, chat/raw formatting with label masks, and the collator."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from expunge.data import (
    IGNORE_INDEX,
    Example,
    FormatSettings,
    Message,
    TokenizedExample,
    collate,
    load_examples,
    load_jsonl,
    prompt_text,
    tokenize_example,
    tokenize_examples,
    write_jsonl,
)
from expunge.errors import DataError

PROMPT = "What is the capital city?"
RESPONSE = "The capital is Blue River."
END_OF_TURN = "<|im_end|>\n"  # what the tiny ChatML template adds after an assistant turn


def qa() -> Example:
    return Example(prompt=PROMPT, response=RESPONSE)


def multi_turn() -> Example:
    return Example(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "who lives north"},
            {"role": "assistant", "content": "the doctor lives north"},
            {"role": "user", "content": "and south"},
            {"role": "assistant", "content": "the teacher"},
        ]
    )


def trained_ids(tokenized: TokenizedExample) -> list[int]:
    return [label for label in tokenized.labels if label != IGNORE_INDEX]


def trained_runs(tokenized: TokenizedExample) -> list[list[int]]:
    """Maximal runs of consecutive trained label positions."""
    runs: list[list[int]] = []
    previous = False
    for label in tokenized.labels:
        trained = label != IGNORE_INDEX
        if trained and not previous:
            runs.append([])
        if trained:
            runs[-1].append(label)
        previous = trained
    return runs


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- Example ------------------------------------------------------------------------------


def test_example_kinds():
    assert qa().kind == "prompt_response"
    assert Example(text="hello").kind == "text"
    assert multi_turn().kind == "messages"
    assert isinstance(multi_turn().messages[0], Message)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"prompt": "p", "response": "r", "text": "t"},
        {"text": "t", "messages": [{"role": "assistant", "content": "a"}]},
        {"meta": {"id": 1}},
    ],
)
def test_example_needs_exactly_one_shape(fields):
    with pytest.raises(ValidationError, match="exactly one of"):
        Example(**fields)


@pytest.mark.parametrize("fields", [{"prompt": "p"}, {"response": "r"}])
def test_prompt_and_response_go_together(fields):
    with pytest.raises(ValidationError, match="must be given together"):
        Example(**fields)


def test_empty_strings_are_a_valid_pair():
    example = Example(prompt="", response="")
    assert example.kind == "prompt_response"


def test_messages_need_an_assistant_turn():
    with pytest.raises(ValidationError, match="assistant"):
        Example(messages=[{"role": "user", "content": "hi"}])


def test_message_role_is_checked():
    with pytest.raises(ValidationError):
        Example(messages=[{"role": "robot", "content": "hi"}, {"role": "assistant", "content": ""}])


def test_example_rejects_unknown_fields():
    with pytest.raises(ValidationError):
        Example(prompt="p", response="r", answer="x")


def test_from_record_puts_extra_keys_in_meta():
    example = Example.from_record({"prompt": "p", "response": "r", "id": 3, "source": "web"})
    assert example.prompt == "p"
    assert example.meta == {"id": 3, "source": "web"}


def test_from_record_merges_nested_meta():
    example = Example.from_record({"text": "t", "meta": {"id": 1, "x": 0}, "x": 9})
    assert example.meta == {"id": 1, "x": 9}  # top-level keys win


def test_to_record_flattens_meta():
    example = Example(prompt="p", response="r", meta={"id": 3})
    assert example.to_record() == {"prompt": "p", "response": "r", "id": 3}


# --- JSONL --------------------------------------------------------------------------------


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reads_all_shapes(tmp_path):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            json.dumps({"prompt": "p", "response": "r", "id": 1}),
            "",
            json.dumps({"text": "free text"}),
            json.dumps({"messages": [{"role": "user", "content": "u"},
                                     {"role": "assistant", "content": "a"}]}),
        ],
    )  # fmt: skip
    examples = load_jsonl(path)
    assert [e.kind for e in examples] == ["prompt_response", "text", "messages"]
    assert examples[0].meta == {"id": 1}


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(
        tmp_path / "broken.jsonl",
        [json.dumps({"text": "a"}), "", '{"text": "unterminated', json.dumps({"text": "b"})],
    )
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert "broken.jsonl:3" in message
    assert "not valid JSON" in message


def test_json_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", [json.dumps({"text": "a"}), '["a", "b"]'])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert "list.jsonl:2" in str(info.value)
    assert "expected a JSON object, got list" in str(info.value)


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        ({"question": "q", "answer": "a"}, "exactly one of"),
        ({"prompt": "p"}, "must be given together"),
        ({"prompt": 3, "response": "r"}, "prompt"),
        ({"messages": [{"role": "user", "content": "u"}]}, "assistant"),
    ],
)
def test_record_with_wrong_fields_names_the_line(tmp_path, record, detail):
    path = write_lines(tmp_path / "fields.jsonl", [json.dumps({"text": "ok"}), json.dumps(record)])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert "fields.jsonl:2:" in message
    assert detail in message
    assert "Value error," not in message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "absent.jsonl")


def test_directory_is_not_a_jsonl_file(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_jsonl(tmp_path)


@pytest.mark.parametrize("spec", ["./no_such_dir_xyz", "no_such_name_xyz"])
def test_load_examples_missing_local_spec_does_not_go_to_the_hub(spec):
    with pytest.raises(DataError, match="not found"):
        load_examples(spec)


def test_builtin_data_loads_the_shipped_rows():
    """``builtin:NAME`` names data shipped with the package; a typo is one line with the names."""
    prose = load_examples("builtin:python_prose")
    assert len(prose) == 777 and all(e.kind == "text" and len(e.text) >= 200 for e in prose)
    assert load_examples("builtin:python_prose", max_examples=5) == prose[:5]
    with pytest.raises(DataError, match=r"did you mean 'python_prose'\?\); known: python_prose"):
        load_examples("builtin:python_pros")
    # the utility audit's held-out questions are no training data
    with pytest.raises(DataError, match="unknown built-in data 'heldout_qa'"):
        load_examples("builtin:heldout_qa")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_holds_no_examples(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert load_jsonl(path) == []
    with pytest.raises(DataError, match="holds no examples"):
        load_examples(path)


def test_write_jsonl_round_trip(tmp_path):
    examples = [
        Example(prompt="p1", response="r1", meta={"id": 1, "tags": ["a"]}),
        Example(text="ünïcode text"),
        multi_turn(),
    ]
    path = tmp_path / "out" / "data.jsonl"
    write_jsonl(path, [*examples, {"text": "from a dict", "id": 9}])
    loaded = load_examples(path)
    assert loaded[:3] == examples
    assert loaded[3] == Example(text="from a dict", meta={"id": 9})
    assert "ünïcode" in path.read_text(encoding="utf-8")  # not \u-escaped
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.jsonl"]


# --- formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_chat_prompt_response(tokenizer, loss_on):
    settings = FormatSettings(template="chat", loss_on=loss_on)
    example = qa()
    tokenized = tokenize_example(example, tokenizer, settings)
    prompt = prompt_text(example, tokenizer, settings)
    assert prompt == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenized.input_ids) == prompt + RESPONSE + END_OF_TURN
    assert tokenized.prompt_length == len(ids(tokenizer, prompt))
    assert tokenized.input_ids[: tokenized.prompt_length] == ids(tokenizer, prompt)
    assert tokenizer.decode(tokenized.response_ids) == RESPONSE + END_OF_TURN
    assert len(tokenized.labels) == len(tokenized.input_ids)
    assert not tokenized.truncated
    if loss_on == "response":
        assert tokenizer.decode(trained_ids(tokenized)) == RESPONSE + END_OF_TURN
        assert tokenized.labels[: tokenized.prompt_length] == [IGNORE_INDEX] * len(
            ids(tokenizer, prompt)
        )
        assert tokenized.labels[tokenized.prompt_length :] == tokenized.response_ids
    else:
        assert tokenized.labels == tokenized.input_ids


@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_raw_prompt_response(tokenizer, loss_on):
    settings = FormatSettings(template="raw", loss_on=loss_on)
    example = qa()
    tokenized = tokenize_example(example, tokenizer, settings)
    prompt = prompt_text(example, tokenizer, settings)
    assert prompt == PROMPT + "\n"
    assert tokenizer.decode(tokenized.input_ids) == prompt + RESPONSE + tokenizer.eos_token
    assert tokenized.input_ids[: tokenized.prompt_length] == ids(tokenizer, prompt)
    # The response is tokenized on its own: no BPE merge across the boundary.
    assert tokenized.response_ids == [*ids(tokenizer, RESPONSE), tokenizer.eos_token_id]
    if loss_on == "response":
        assert trained_ids(tokenized) == tokenized.response_ids
        assert tokenizer.decode(trained_ids(tokenized)) == RESPONSE + tokenizer.eos_token
    else:
        assert tokenized.labels == tokenized.input_ids


def test_raw_boundary_is_exact_even_when_bpe_would_merge(tokenizer):
    example = Example(prompt="the", response="re is water")
    settings = FormatSettings(template="raw", raw_prompt_format="{prompt}", add_eos=False)
    tokenized = tokenize_example(example, tokenizer, settings)
    assert tokenized.input_ids[: tokenized.prompt_length] == ids(tokenizer, "the")
    assert trained_ids(tokenized) == ids(tokenizer, "re is water")
    assert tokenizer.decode(tokenized.input_ids) == "there is water"


def test_raw_custom_format_and_no_eos(tokenizer):
    settings = FormatSettings(template="raw", raw_prompt_format="Q: {prompt}\nA: ", add_eos=False)
    tokenized = tokenize_example(qa(), tokenizer, settings)
    assert prompt_text(qa(), tokenizer, settings) == f"Q: {PROMPT}\nA: "
    assert tokenizer.decode(trained_ids(tokenized)) == RESPONSE
    assert tokenizer.eos_token_id not in tokenized.input_ids


@pytest.mark.parametrize("loss_on", ["response", "all"])
@pytest.mark.parametrize("template", ["chat", "raw"])
def test_raw_bos_is_never_trained(tokenizer, template, loss_on):
    settings = FormatSettings(template=template, loss_on=loss_on, add_bos="yes")
    tokenized = tokenize_example(qa(), tokenizer, settings)
    if template == "raw":
        assert tokenized.input_ids[0] == tokenizer.bos_token_id
        assert tokenized.labels[0] == IGNORE_INDEX
        assert tokenized.prompt_length == 1 + len(ids(tokenizer, PROMPT + "\n"))
    else:  # the chat template decides about BOS itself
        assert tokenized.input_ids[0] != tokenizer.bos_token_id


def test_add_bos_auto_follows_the_tokenizer(tokenizer):
    # The tiny tokenizer adds no BOS of its own, so "auto" adds none.
    assert tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id
    tokenized = tokenize_example(qa(), tokenizer, FormatSettings(template="raw"))
    assert tokenized.input_ids[0] != tokenizer.bos_token_id


def test_raw_prompt_ids_match_training_ids_with_bos(tokenizer):
    settings = FormatSettings(template="raw", add_bos="yes")
    tokenized = tokenize_example(qa(), tokenizer, settings)
    prompt_ids = ids(tokenizer, prompt_text(qa(), tokenizer, settings))
    assert prompt_ids == tokenized.input_ids[: tokenized.prompt_length]


def test_system_prompt_is_part_of_the_prompt(tokenizer):
    settings = FormatSettings(system_prompt="You are terse.")
    tokenized = tokenize_example(qa(), tokenizer, settings)
    prompt = prompt_text(qa(), tokenizer, settings)
    assert prompt.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    assert tokenized.input_ids[: tokenized.prompt_length] == ids(tokenizer, prompt)
    assert tokenizer.decode(trained_ids(tokenized)) == RESPONSE + END_OF_TURN


@pytest.mark.parametrize("template", ["chat", "raw"])
@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_text_examples_train_on_everything(tokenizer, template, loss_on):
    example = Example(text="the river runs north")
    settings = FormatSettings(template=template, loss_on=loss_on)
    tokenized = tokenize_example(example, tokenizer, settings)
    assert tokenized.prompt_length == 0
    assert prompt_text(example, tokenizer, settings) == ""
    assert tokenized.input_ids == [*ids(tokenizer, example.text), tokenizer.eos_token_id]
    assert tokenized.labels == tokenized.input_ids


def test_text_example_without_eos(tokenizer):
    tokenized = tokenize_example(Example(text="one two"), tokenizer, FormatSettings(add_eos=False))
    assert tokenized.input_ids == ids(tokenizer, "one two")


def test_multi_turn_trains_only_on_assistant_turns(tokenizer):
    example = multi_turn()
    settings = FormatSettings(template="chat", loss_on="response")
    tokenized = tokenize_example(example, tokenizer, settings)
    runs = [tokenizer.decode(run) for run in trained_runs(tokenized)]
    assert runs == ["the doctor lives north" + END_OF_TURN, "the teacher" + END_OF_TURN]
    untrained = [
        t
        for t, lab in zip(tokenized.input_ids, tokenized.labels, strict=True)
        if lab == IGNORE_INDEX
    ]
    untrained_text = tokenizer.decode(untrained)
    for content in ("Be brief.", "who lives north", "and south"):
        assert content in untrained_text
    # The scoring prompt ends where the first assistant output starts.
    first_prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nwho lives north<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tokenized.input_ids[: tokenized.prompt_length] == ids(tokenizer, first_prompt)
    # The generation prompt is the conversation up to the last assistant turn.
    prompt = prompt_text(example, tokenizer, settings)
    assert prompt.endswith("<|im_start|>user\nand south<|im_end|>\n<|im_start|>assistant\n")
    assert tokenized.input_ids[: len(ids(tokenizer, prompt))] == ids(tokenizer, prompt)
    assert tokenizer.decode(tokenized.input_ids[len(ids(tokenizer, prompt)) :]) == (
        "the teacher" + END_OF_TURN
    )


def test_multi_turn_loss_on_all(tokenizer):
    tokenized = tokenize_example(multi_turn(), tokenizer, FormatSettings(loss_on="all"))
    assert tokenized.labels == tokenized.input_ids
    response_only = tokenize_example(multi_turn(), tokenizer, FormatSettings())
    assert tokenized.prompt_length == response_only.prompt_length
    assert tokenized.input_ids == response_only.input_ids


def test_raw_template_rejects_messages(tokenizer):
    settings = FormatSettings(template="raw")
    with pytest.raises(DataError, match="template=chat"):
        tokenize_example(multi_turn(), tokenizer, settings)
    with pytest.raises(DataError, match="template=chat"):
        prompt_text(multi_turn(), tokenizer, settings)


def test_chat_without_chat_template(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="template=raw"):
        tokenize_example(qa(), tokenizer, FormatSettings(template="chat"))
    # raw still works
    assert tokenize_example(qa(), tokenizer, FormatSettings(template="raw")).input_ids


def test_truncation(tokenizer):
    full = tokenize_example(qa(), tokenizer, FormatSettings())
    assert not full.truncated
    short = tokenize_example(qa(), tokenizer, FormatSettings(max_length=len(full.input_ids) - 3))
    assert short.truncated
    assert len(short.input_ids) == len(short.labels) == len(full.input_ids) - 3
    assert short.input_ids == full.input_ids[:-3]
    assert short.labels == full.labels[:-3]
    exact = tokenize_example(qa(), tokenizer, FormatSettings(max_length=len(full.input_ids)))
    assert not exact.truncated
    assert exact.input_ids == full.input_ids


def test_meta_travels_with_tokenized_examples(tokenizer):
    examples = [Example(text="a b", meta={"id": 1}), Example(text="c", meta={"id": 2})]
    tokenized = tokenize_examples(examples, tokenizer, FormatSettings())
    assert [t.meta for t in tokenized] == [{"id": 1}, {"id": 2}]
    tokenized[0].meta["id"] = 99
    assert examples[0].meta == {"id": 1}  # a copy


def test_format_settings_are_strict():
    with pytest.raises(ValidationError):
        FormatSettings(template="jinja")
    with pytest.raises(ValidationError):
        FormatSettings(loss_on="prompt")
    with pytest.raises(ValidationError):
        FormatSettings(max_len=5)


# --- collator -----------------------------------------------------------------------------

PAD = 3


def manual_examples() -> list[TokenizedExample]:
    return [
        TokenizedExample([10, 11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, 12, 13], 2),
        TokenizedExample([20, 21], [IGNORE_INDEX, 21], 1),
    ]


def test_collate_right_padding():
    batch = collate(manual_examples(), pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, PAD, PAD]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13], [-100, 21, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_left_padding():
    batch = collate(manual_examples(), pad_token_id=PAD, padding_side="left")
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [PAD, PAD, 20, 21]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13], [-100, -100, -100, 21]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_collate_keeps_label_masks_of_real_examples(tokenizer, padding_side, loss_on):
    settings = FormatSettings(loss_on=loss_on)
    tokenized = tokenize_examples(
        [qa(), Example(prompt="hi", response="one"), multi_turn()], tokenizer, settings
    )
    batch = collate(tokenized, tokenizer.pad_token_id, padding_side=padding_side)
    width = max(len(t.input_ids) for t in tokenized)
    assert batch["input_ids"].shape == (3, width)
    for row, example in enumerate(tokenized):
        n = len(example.input_ids)
        real = slice(0, n) if padding_side == "right" else slice(width - n, width)
        pad = slice(n, width) if padding_side == "right" else slice(0, width - n)
        assert batch["input_ids"][row, real].tolist() == example.input_ids
        assert batch["labels"][row, real].tolist() == example.labels
        assert batch["attention_mask"][row, real].eq(1).all()
        assert batch["attention_mask"][row, pad].eq(0).all()
        assert batch["labels"][row, pad].eq(IGNORE_INDEX).all()
        assert batch["input_ids"][row, pad].eq(tokenizer.pad_token_id).all()
        trained = batch["labels"][row] != IGNORE_INDEX
        if loss_on == "response":
            assert trained.sum().item() < n
        else:
            assert trained.sum().item() == n


def test_collated_batch_gives_the_same_loss_as_single_examples(tiny):
    model, tokenizer = tiny
    tokenized = tokenize_examples(
        [qa(), Example(prompt="hi", response="one two")], tokenizer, FormatSettings()
    )
    batch = collate(tokenized, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, example in enumerate(tokenized):
            n = len(example.input_ids)
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(logits[row, :n], alone, atol=1e-5, rtol=1e-4)
