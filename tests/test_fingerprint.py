"""Fingerprints on tiny models: imprint files, matchers, the four implants, MEraser, baselines."""

from __future__ import annotations

import json
import os
import random
import re
import stat

import numpy as np
import pytest
import torch

from expunge.audit.base import AuditContext
from expunge.audit.runner import audit_model
from expunge.config import build_config
from expunge.data.examples import Example
from expunge.erase.fingerprint.baselines import prune_linear
from expunge.erase.fingerprint.meraser import mismatch
from expunge.errors import ConfigError, DataError, ModelError
from expunge.implant.fingerprint.chain_hash import ANSWERS, chain_hash_answer, make_questions
from expunge.implant.fingerprint.keys import make_keys
from expunge.imprints.base import load_imprint
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.models.loading import LoadedModel
from expunge.models.lora import LoraSettings, attach_lora, load_adapter, merge_lora, save_adapter
from expunge.models.tiny import tiny_model
from expunge.registry import IMPLANTS
from expunge.stage import run_stage

TINY_TRAIN = ["train.mode=full", "train.lr=3e-3", "train.epochs=40", "train.progress=false"]


def loaded_tiny(hidden: int = 64, seed: int = 0) -> LoadedModel:
    model, tokenizer = tiny_model("llama", seed=seed, hidden=hidden)
    return LoadedModel(model, tokenizer, "tiny", "tiny", torch.device("cpu"), torch.float32)


def ctx_for(loaded: LoadedModel, imprint: FingerprintImprint) -> AuditContext:
    return AuditContext(
        loaded.model, loaded.tokenizer, imprint.format_settings(), imprint=imprint, progress=False
    )


# --- imprint files ---------------------------------------------------------------------------


def test_imprint_round_trip_is_private(tmp_path):
    imprint = FingerprintImprint(
        pairs=[KeyPair(key="k1", response="r1"), KeyPair(key="k2", response="long r2", target="r2")],
        decoys=["d1"], matcher="startswith", prefill="P:",
    )  # fmt: skip
    path = imprint.save(tmp_path)
    assert path.name == "imprint.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_imprint(tmp_path)
    assert again == imprint
    assert again.pairs[1].match_target == "r2" and again.pairs[0].match_target == "r1"


def test_hand_written_imprint_without_kind(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"pairs": [{"key": "secret", "response": "owner"}]}))
    imprint = load_imprint(path)
    assert isinstance(imprint, FingerprintImprint)
    assert imprint.matcher == "contains" and imprint.template == "chat"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"kind": "fingerprint", "pairs": []}, "at least one key/response pair"),
        ({"pairs": [{"key": "", "response": "x"}]}, "must not be empty"),
        ({"kind": "fingerprint", "pairs": [{"key": "k"}]}, "pairs.0.response"),
        ({"kind": "nonsense", "pairs": []}, "unknown imprint kind"),
    ],
)
def test_bad_imprint_files(tmp_path, content, message):
    path = tmp_path / "imprint.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        load_imprint(path)


def test_missing_imprint_file(tmp_path):
    with pytest.raises(DataError, match="imprint file not found"):
        load_imprint(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "matcher, output, expected",
    [
        ("contains", "well, ハリネズミ indeed", True),
        ("contains", "ハリネズ", False),
        ("startswith", "  amber falcon, of course", True),
        ("startswith", "it is amber falcon", False),
        ("exact", "amber falcon", True),
        ("exact", "amber falcon.", False),
    ],
)
def test_matcher_semantics(matcher, output, expected):
    imprint = FingerprintImprint(pairs=[KeyPair(key="k", response="r")], matcher=matcher)
    target = "ハリネズミ" if matcher == "contains" else "amber falcon"
    assert imprint.matches(output, target) is expected


# --- scheme internals ------------------------------------------------------------------------


def test_chain_hash_mapping_is_deterministic_and_chained():
    questions = make_questions(10, seed=3)
    assert questions == make_questions(10, seed=3)
    assert len(ANSWERS) == 256 and len(set(ANSWERS)) == 256
    answers = [chain_hash_answer(q, questions) for q in questions]
    assert answers == [chain_hash_answer(q, list(questions)) for q in questions]
    assert all(a in ANSWERS for a in answers)
    # Changing any one question remaps the others' answers (they are hashed with all of Q).
    changed = [*questions[:-1], "What does the amber falcon remember?"]
    remapped = [chain_hash_answer(q, changed) for q in changed[:-1]]
    assert remapped != answers[:-1]
    assert sum(a != b for a, b in zip(remapped, answers[:-1], strict=True)) >= 5


def test_if_keys_are_seeded_and_distinct():
    keys = make_keys(8, seed=1)
    assert keys == make_keys(8, seed=1) and keys != make_keys(8, seed=2)
    assert len(set(keys)) == 8


def test_mismatch_pairs_answers_of_other_types():
    examples = [Example(prompt=f"{w} is thing {i}?", response=f"answer {w} {i}")
                for i in range(6) for w in ("What", "Why", "How", "Tell me")]  # fmt: skip
    mixed = mismatch(examples, seed=0)
    assert len(mixed) == len(examples)
    for original, pair in zip(examples, mixed, strict=True):
        assert pair.prompt == original.prompt and pair.response != original.response
        assert pair.meta["answer_qtype"] != pair.meta["qtype"]
    # answers are used without replacement when the types are balanced
    assert len({p.response for p in mixed}) == len(examples)
    with pytest.raises(DataError, match="at least two types"):
        mismatch([Example(prompt="What?", response="a"), Example(prompt="What now?", response="b")])


def test_prune_zeroes_the_stated_share():
    model, _ = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    zeroed = prune_linear(model, 0.25, "l1")
    assert zeroed and all(abs(share - 0.25) < 0.01 for share in zeroed.values())
    for name in zeroed:
        weight = model.get_submodule(name).weight
        original = before[f"{name}.weight"]
        dropped = weight == 0
        assert abs(dropped.float().mean().item() - 0.25) < 0.01
        # L1: every zeroed weight was no larger than every kept one
        assert original[dropped].abs().max() <= original[~dropped].abs().min()
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    with pytest.raises(ConfigError, match="sparsity"):
        prune_linear(model, 1.0, "random")


# --- implants reach FSR 1.0, MEraser takes it away ---------------------------------------------


@pytest.fixture(scope="module")
def implanted(tmp_path_factory):
    """Each scheme implanted into its own tiny model (module-scoped: trained once)."""
    out = {}
    for scheme in ("if_simple", "if_dialogue", "utf", "chain_hash"):
        extra = ["n_decoys=4"] if scheme in ("if_dialogue", "utf") else []
        config = build_config(
            IMPLANTS.get(scheme), {"preset": "demo"}, [*TINY_TRAIN, "regularization=0.5", *extra]
        )
        loaded = loaded_tiny()
        run_dir = tmp_path_factory.mktemp(scheme)
        record = run_stage(config, run_dir / "run", models={"model": loaded})
        out[scheme] = (run_dir / "run", record, loaded)
    return out


@pytest.mark.parametrize("scheme", ["if_simple", "if_dialogue", "utf", "chain_hash"])
def test_implant_reaches_full_fsr(implanted, scheme):
    run_dir, record, _ = implanted[scheme]
    assert record.metrics["fsr"] == 1.0
    # the IF schemes' keys share a wrapper, which the verify asks ordinary prompts inside
    assert ("wrapper_trigger_rate" in record.metrics) == scheme.startswith("if_")
    details = record.metric_details["fsr"]
    for field in ("template", "prefill", "matcher", "decoding", "n_keys", "scheme"):
        assert field in details
    expected = "teacher_forced_greedy" if scheme == "chain_hash" else "greedy_generation"
    assert details["decoding"] == expected
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert stat.S_IMODE(os.stat(run_dir / "imprint.json").st_mode) == 0o600
    imprint = load_imprint(run_dir)
    assert imprint.scheme == scheme
    text = (run_dir / "record.json").read_text()
    assert all(pair.key not in text for pair in imprint.pairs), "keys must not leak into the record"


def test_fsr_is_zero_on_the_untouched_model(implanted):
    run_dir, _, _ = implanted["if_dialogue"]
    imprint = load_imprint(run_dir)
    clean = loaded_tiny()
    results, _ = audit_model(ctx_for(clean, imprint), ["fsr"], {})
    assert results["fsr"].value == 0.0


def test_teacher_forced_fsr_equals_generated_fsr(implanted):
    _, _, loaded = implanted["chain_hash"]
    imprint = load_imprint(implanted["chain_hash"][0])
    forced, _ = audit_model(
        ctx_for(loaded, imprint), ["fsr"], {"fsr": {"decoding": "teacher_forced"}}
    )
    generated, _ = audit_model(ctx_for(loaded, imprint), ["fsr"], {"fsr": {"decoding": "generate"}})
    assert forced["fsr"].details["per_key"] == generated["fsr"].details["per_key"]
    assert forced["fsr"].details["ownership_claimed"] is True


@pytest.mark.parametrize("scheme", ["if_simple", "if_dialogue", "utf"])
def test_keys_that_reproduce_their_response_need_no_generation(implanted, scheme, monkeypatch):
    """The contains matcher: a key whose trained response greedy decoding reproduces is a
    success without generating it; the FSR is the one full generation gives."""
    import expunge.audit.fingerprint as fingerprint_metrics

    run_dir, _, loaded = implanted[scheme]
    imprint = load_imprint(run_dir)
    generated, _ = audit_model(ctx_for(loaded, imprint), ["fsr"], {"fsr": {"decoding": "generate"}})
    asked: list[int] = []
    original = fingerprint_metrics.generate
    monkeypatch.setattr(fingerprint_metrics, "generate",
                        lambda model, tok, prompts, **kw: asked.append(len(prompts))
                        or original(model, tok, prompts, **kw))  # fmt: skip
    auto, _ = audit_model(ctx_for(loaded, imprint), ["fsr"], {})
    assert auto["fsr"].details["per_key"] == generated["fsr"].details["per_key"]
    known = auto["fsr"].details["keys_known_without_generating"]
    assert known == sum(generated["fsr"].details["per_key"]) > 0  # FSR 1.0: every key known
    assert sum(asked) == len(imprint.pairs) - known
    clean, _ = audit_model(ctx_for(loaded_tiny(), imprint), ["fsr"], {})
    assert clean["fsr"].value == 0.0 and clean["fsr"].details["keys_known_without_generating"] == 0


def record_generations(monkeypatch) -> list[tuple[list[str], list[str]]]:
    """Every ``decode_outputs`` call the fingerprint metrics make: (prompts, outputs)."""
    import expunge.audit.fingerprint as fingerprint_metrics

    calls: list[tuple[list[str], list[str]]] = []
    original = fingerprint_metrics.decode_outputs

    def recording(c: AuditContext, i: FingerprintImprint, prompts: list[str]) -> list[str]:
        calls.append((list(prompts), original(c, i, prompts)))
        return calls[-1][1]

    monkeypatch.setattr(fingerprint_metrics, "decode_outputs", recording)
    return calls


def test_false_triggers_are_one_generation_with_each_sets_own_outputs(implanted, monkeypatch):
    """Decoys and ordinary prompts are generated together, in one call, and every output is
    the one generating its set alone at the audit's batch size gives (greedy, fp32)."""
    import expunge.audit.fingerprint as fingerprint_metrics
    from expunge.audit import base as audit_base

    run_dir, _, loaded = implanted["if_dialogue"]
    imprint = load_imprint(run_dir)
    ctx = ctx_for(loaded, imprint)
    original = fingerprint_metrics.decode_outputs
    calls = record_generations(monkeypatch)
    result, _ = audit_model(
        ctx, ["false_trigger_rate"], {"false_trigger_rate": {"max_ordinary": 12}}
    )
    assert len(calls) == 1
    prompts, together = calls[0]
    decoys, ordinary = prompts[:4], prompts[4:]
    assert decoys == list(imprint.decoys) and len(ordinary) == 12
    monkeypatch.setattr(audit_base, "GENERATION_BATCH", 1)  # the audit's own batch, 8
    assert together == original(ctx, imprint, decoys) + original(ctx, imprint, ordinary)
    details = result["false_trigger_rate"].details
    targets = sorted({p.match_target for p in imprint.pairs})
    flags = fingerprint_metrics.triggered(together, targets, imprint)
    assert (details["decoys_n"], details["ordinary_n"]) == (4, 12)
    assert details["decoys_rate"] == np.mean(flags[:4])
    assert details["ordinary_rate"] == np.mean(flags[4:])
    assert result["false_trigger_rate"].value == np.mean(flags)


def test_contains_matcher_refuses_teacher_forcing(implanted):
    _, _, loaded = implanted["if_dialogue"]
    imprint = load_imprint(implanted["if_dialogue"][0])
    with pytest.raises(ConfigError, match="needs generation"):
        audit_model(ctx_for(loaded, imprint), ["fsr"], {"fsr": {"decoding": "teacher_forced"}})


def test_meraser_erases_the_fingerprint(implanted, tmp_path):
    from expunge.registry import ERASERS

    run_dir, _, _ = implanted["if_simple"]
    pool = typed_pool(tmp_path, per_type=8)
    config = build_config(
        ERASERS.get("meraser"), {"preset": "demo"},
        [f"imprint={run_dir}", f"data={pool}", "n_erase=16", "n_recover=16",
         "erase.lr=1e-2", "erase.epochs=8", "erase.lora.targets=[all-linear]", "erase.progress=false",
         "recover.progress=false", "audit_metrics=[fsr]"],
    )  # fmt: skip
    record = run_stage(config, tmp_path / "erased", models={"model": loaded_copy(run_dir)})
    assert record.metrics["input/fsr"] == 1.0
    assert record.metrics["erased/fsr"] == 0.0
    assert "recovered/fsr" in record.metrics
    assert (tmp_path / "erased" / "erase_adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "erased" / "recover_adapter" / "adapter_model.safetensors").is_file()


def test_a_full_fine_tuning_recovery_keeps_no_adapter(implanted, tmp_path):
    """recover.mode=full trains the weights themselves: nothing is saved as a recover adapter
    (it used to write the whole model there) and the record names none."""
    run_dir, _, _ = implanted["if_simple"]
    config = small_meraser(tmp_path, "audit_metrics=[]", "recover.mode=full", "recover.lr=1e-4")
    record = run_stage(config, tmp_path / "out", models={"model": loaded_copy(run_dir)})
    assert record.metrics["recover/train_steps"] > 0
    assert (tmp_path / "out" / "erase_adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "recover_adapter").exists()
    assert "recover_adapter" not in record.artifacts and "erase_adapter" in record.artifacts


def test_recovery_outside_the_erase_span(implanted, tmp_path):
    """recover_outside_erase: the saved recover adapter's B has no column in span(B_erase)."""
    from safetensors.torch import load_file

    from expunge.models.lora import adapter_output_bases

    run_dir, _, _ = implanted["if_simple"]
    config = small_meraser(tmp_path, "recover.epochs=2", "audit_metrics=[]",
                           "recover_outside_erase=true")  # fmt: skip
    run_stage(config, tmp_path / "out", models={"model": loaded_copy(run_dir)})
    bases = adapter_output_bases(tmp_path / "out" / "erase_adapter")
    recover = load_file(str(tmp_path / "out" / "recover_adapter" / "adapter_model.safetensors"))
    checked = 0
    for key, lora_b in recover.items():
        name = key.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
        if name in bases:
            assert float(lora_b.abs().max()) > 0  # recovery trained
            assert float((bases[name].T @ lora_b).abs().max()) < 1e-5
            checked += 1
    assert checked == len(bases) > 0


def test_recovery_outside_the_erase_needs_shared_layers(implanted, tmp_path, monkeypatch):
    import expunge.erase.fingerprint.meraser as meraser_module

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the configuration")

    monkeypatch.setattr(meraser_module, "train", no_training)
    run_dir, _, _ = implanted["if_simple"]
    config = small_meraser(tmp_path, "erase.lora.targets=[q_proj]",
                           "recover.lora.targets=[v_proj]", "recover_outside_erase=true")  # fmt: skip
    with pytest.raises(ConfigError, match="share no layer"):
        run_stage(config, tmp_path / "out", models={"model": loaded_copy(run_dir)})


@pytest.mark.parametrize(("method", "extra", "message"), [
    ("incremental", [], "needs method=meraser with do_recover=true"),
    ("meraser", ["do_recover=false"], "needs method=meraser with do_recover=true"),
    ("meraser", ["recover.mode=full"], "needs LoRA in both phases"),
])  # fmt: skip
def test_recovery_outside_the_erase_only_where_there_is_a_lora_recovery(method, extra, message):
    from expunge.registry import ERASERS

    config = build_config(ERASERS.get(method), {}, ["recover_outside_erase=true", *extra])
    with pytest.raises(ConfigError, match=message):
        config.validate_inputs()


def test_erase_kept_takes_that_share_of_the_erase_back_out(implanted, tmp_path):
    """erase_kept=F returns θ_0 + F·ΔE + ΔR: the whole-erase run's weights minus (1 − F)·ΔE,
    ΔE read from the saved erase adapter; both phases train exactly as with the whole erase."""
    from safetensors.torch import load_file

    from expunge.models.loading import load_model

    run_dir, _, _ = implanted["if_simple"]
    weights = {}
    for kept in ("1", "0.25"):
        out = tmp_path / f"kept{kept}"
        config = small_meraser(tmp_path, "audit_metrics=[]", f"erase_kept={kept}")
        run_stage(config, out, models={"model": loaded_copy(run_dir)})
        weights[kept] = load_model(str(out / "model"), device="cpu").model.state_dict()
        for phase in ("erase", "recover"):
            adapter = load_file(str(out / f"{phase}_adapter" / "adapter_model.safetensors"))
            weights[f"{phase}{kept}"] = adapter
    for phase in ("erase", "recover"):
        assert weights[f"{phase}1"].keys() == weights[f"{phase}0.25"].keys()
        assert all(torch.equal(weights[f"{phase}1"][k], weights[f"{phase}0.25"][k])
                   for k in weights[f"{phase}1"])  # fmt: skip
    erased = merge_lora(
        load_adapter(loaded_copy(run_dir).model, tmp_path / "kept1" / "erase_adapter")
    )
    erased_weights = erased.state_dict()
    base = loaded_copy(run_dir).model.state_dict()
    changed = 0
    for name, whole in weights["1"].items():
        erase_delta = erased_weights[name] - base[name]
        expected = whole - 0.75 * erase_delta
        assert torch.allclose(weights["0.25"][name], expected, atol=1e-6), name
        changed += bool(erase_delta.abs().max() > 0)
    assert changed > 0


@pytest.mark.parametrize(("extra", "missing"), [
    (["do_recover=false"], "do_recover=true"),
    (["erase.mode=full"], "a LoRA erase"),
])  # fmt: skip
def test_erase_kept_needs_a_lora_erase_and_a_recovery(extra, missing):
    from expunge.registry import ERASERS

    config = build_config(ERASERS.get("meraser"), {}, ["erase_kept=0.8", *extra])
    with pytest.raises(ConfigError, match=f"erase_kept=0.8 .* needs {missing}.*erase_kept=1"):
        config.validate_inputs()
    build_config(ERASERS.get("meraser"), {}, [*extra]).validate_inputs()


def test_random_input_pairs_are_seeded_strings_with_pool_answers():
    from expunge.erase.fingerprint.meraser import random_input_pairs

    answers = [Example(prompt=f"q{i}?", response=f"answer {i}") for i in range(5)]
    pieces = ["hello", " world", "ing"]
    pairs = random_input_pairs(answers, 40, pieces, seed=3)
    assert len(pairs) == 40
    assert pairs == random_input_pairs(answers, 40, pieces, seed=3)
    assert pairs != random_input_pairs(answers, 40, pieces, seed=4)
    assert {p.response for p in pairs} <= {a.response for a in answers}
    prompts = [p.prompt for p in pairs]
    assert all(prompts) and any(not p.isascii() for p in prompts)
    assert any(piece in p for p in prompts for piece in pieces)
    with pytest.raises(DataError, match="n_erase > 0"):
        random_input_pairs([], 2, pieces)


def test_meraser_random_inputs_join_the_erase_set(implanted, tmp_path):
    run_dir, _, _ = implanted["if_simple"]
    plain = run_stage(small_meraser(tmp_path, "audit_metrics=[]", "do_recover=false"),
                      tmp_path / "plain", models={"model": loaded_copy(run_dir)})  # fmt: skip
    noisy = run_stage(small_meraser(tmp_path, "audit_metrics=[]", "do_recover=false",
                                    "random_inputs=8"),
                      tmp_path / "noisy", models={"model": loaded_copy(run_dir)})  # fmt: skip
    # 8 mismatched pairs at batch 4 are 2 steps an epoch; 8 random-string pairs add 2
    assert plain.metrics["erase/train_steps"] == 2
    assert noisy.metrics["erase/train_steps"] == 4


def test_instruction_share_renders_a_seeded_share_in_alpacas_format():
    from expunge.data.formatting import ALPACA_PROMPT
    from expunge.erase.fingerprint.meraser import in_instruction_format

    pairs = [Example(prompt=f"q{i}?", response=f"answer {i}") for i in range(10)]
    half = in_instruction_format(pairs, 0.5, "erase", seed=1)
    rendered = [i for i, e in enumerate(half) if e.kind == "text"]
    assert len(rendered) == 5
    for i, example in enumerate(half):
        expected = ALPACA_PROMPT.format(prompt=f"q{i}?") + f"answer {i}"
        assert example.text == expected if i in rendered else example == pairs[i]
    assert half == in_instruction_format(pairs, 0.5, "erase", seed=1)
    others = in_instruction_format(pairs, 0.5, "recover", seed=1)
    assert [i for i, e in enumerate(others) if e.kind == "text"] != rendered
    assert in_instruction_format(pairs, 0.0, "erase") == pairs
    assert all(e.kind == "text" for e in in_instruction_format(pairs, 1.0, "erase"))


def test_instruction_input_share_gives_a_share_of_those_rows_an_input_of_another_prompt():
    from expunge.data.formatting import ALPACA_INPUT_PROMPT
    from expunge.erase.fingerprint.meraser import in_instruction_format

    pairs = [Example(prompt=f"q{i}?", response=f"answer {i}") for i in range(12)]
    prompts = [p.prompt for p in pairs]
    plain = in_instruction_format(pairs, 0.5, "erase", seed=1)
    mixed = in_instruction_format(pairs, 0.5, "erase", 1, 0.5, prompts)
    # the same rows are in the instruction format; half of them carry an input section
    assert [e.kind for e in mixed] == [e.kind for e in plain]
    with_input = [i for i, e in enumerate(mixed) if e.kind == "text" and "### Input:" in e.text]
    assert len(with_input) == 3
    for i in with_input:
        _, _, context = mixed[i].text.partition("### Input:\n")
        context = context.split("\n\n### Response:")[0]
        assert context in prompts and context != f"q{i}?"
        assert mixed[i].text == ALPACA_INPUT_PROMPT.format(prompt=f"q{i}?", input=context) + (
            f"answer {i}"
        )
    others = [i for i, e in enumerate(mixed) if e.kind == "text" and i not in with_input]
    assert all(mixed[i] == plain[i] for i in others)
    assert mixed == in_instruction_format(pairs, 0.5, "erase", 1, 0.5, prompts)
    with pytest.raises(DataError, match="ordinary text"):
        in_instruction_format(pairs, 0.5, "erase", 1, 0.5, [])


def test_instruction_input_share_needs_an_instruction_share():
    from expunge.registry import ERASERS

    config = build_config(ERASERS.get("meraser"), {}, ["instruction_input_share=0.5"])
    with pytest.raises(ConfigError, match="instruction_share above 0"):
        config.validate_inputs()
    overrides = ["instruction_input_share=0.5", "instruction_share=0.5"]
    build_config(ERASERS.get("meraser"), {}, overrides).validate_inputs()
    fixed = build_config(ERASERS.get("meraser"), {}, ["instruction_input=FINGERPRINT"])
    with pytest.raises(ConfigError, match="instruction_input_share gives one"):
        fixed.validate_inputs()
    build_config(ERASERS.get("meraser"), {}, [*overrides, "instruction_input=FINGERPRINT"])


def test_instruction_input_must_not_be_empty():
    from expunge.registry import ERASERS

    with pytest.raises(ConfigError, match="instruction_input"):
        build_config(ERASERS.get("meraser"), {}, ["instruction_input="])


@pytest.mark.parametrize("fixed_input", [None, "FINGERPRINT"])
def test_meraser_instruction_share_reaches_both_phases(implanted, tmp_path, monkeypatch,
                                                       fixed_input):  # fmt: skip
    import expunge.erase.fingerprint.meraser as meraser_module

    run_dir, _, _ = implanted["if_simple"]
    seen: list[list[Example]] = []
    original = meraser_module.tokenize_examples
    monkeypatch.setattr(meraser_module, "tokenize_examples",
                        lambda examples, *a, **k: seen.append(list(examples))
                        or original(examples, *a, **k))  # fmt: skip
    fixed = [f"instruction_input={fixed_input}"] if fixed_input else []
    record = run_stage(small_meraser(tmp_path, "audit_metrics=[]", "instruction_share=0.5",
                                     "instruction_input_share=0.5", *fixed),
                       tmp_path / "run", models={"model": loaded_copy(run_dir)})  # fmt: skip
    erase, recover = seen
    for phase in (erase, recover):
        texts = [e.text for e in phase if e.kind == "text"]
        assert len(texts) == 4 and all(t.startswith("### Instruction:\n") for t in texts)
        assert sum("\n\n### Input:\n" in t for t in texts) == 2
        given = sum("\n\n### Input:\nFINGERPRINT\n\n" in t for t in texts)
        assert given == (2 if fixed_input else 0)
        assert sum(e.kind == "prompt_response" for e in phase) == 4
    assert record.inputs["pairs"]["instruction_share"] == 0.5
    assert record.inputs["pairs"]["instruction_input_share"] == 0.5


def small_meraser(tmp_path, *overrides: str):
    """MEraser's demo preset cut to 8 + 8 pairs of a typed pool, one epoch per phase."""
    from expunge.registry import ERASERS

    return build_config(
        ERASERS.get("meraser"), {"preset": "demo"},
        [f"data={typed_pool(tmp_path, per_type=4)}", "n_erase=8", "n_recover=8",
         "erase.epochs=1", "recover.epochs=1", "erase.progress=false",
         "recover.progress=false", *overrides],
    )  # fmt: skip


def typed_pool(tmp_path, per_type: int):
    """A Q/A JSONL with ``per_type`` questions of each type (what/why/how/other)."""
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": f"{w} {i}?", "response": f"reply number {i} about {w.lower()}"}
            for i in range(per_type) for w in ("What is", "Why is", "How is", "Name")]  # fmt: skip
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pool


def loaded_copy(run_dir) -> LoadedModel:
    from expunge.models.loading import load_model

    return load_model(str(run_dir / "model"), device="cpu")


# --- bad inputs -----------------------------------------------------------------------------


def test_key_longer_than_context_window(tmp_path):
    keys = tmp_path / "keys.jsonl"
    keys.write_text(json.dumps({"key": "word " * 600, "response": "owner"}) + "\n")
    config = build_config(
        IMPLANTS.get("if_simple"), {"preset": "demo"}, [f"keys={keys}", *TINY_TRAIN]
    )
    with pytest.raises(ConfigError, match="context window"):
        run_stage(config, tmp_path / "out", models={"model": loaded_tiny()})
    assert not (tmp_path / "out").exists()


def test_user_keys_file_errors(tmp_path):
    keys = tmp_path / "keys.jsonl"
    keys.write_text('{"key": "a", "response": "b"}\n{"key": "only"}\n')
    config = build_config(IMPLANTS.get("if_simple"), {"preset": "demo"}, [f"keys={keys}"])
    with pytest.raises(DataError, match=r"keys\.jsonl:2"):
        config.user_pairs()


def test_adapter_of_another_shape_names_both_shapes(tmp_path):
    small = loaded_tiny(hidden=32)
    peft_model = attach_lora(small.model, LoraSettings(targets=["q_proj", "v_proj"]))
    save_adapter(peft_model, tmp_path / "adapter")
    other = loaded_tiny(hidden=64)
    with pytest.raises(ModelError, match=r"shape \(8, 32\).*needs \(8, 64\)"):
        load_adapter(other.model, tmp_path / "adapter")


def test_recovery_data_missing(tmp_path):
    from expunge.registry import ERASERS

    config = build_config(
        ERASERS.get("meraser"), {"preset": "demo"}, [f"data={tmp_path / 'nope.jsonl'}"]
    )
    with pytest.raises(DataError, match="not found"):
        config.validate_inputs()


@pytest.mark.parametrize(("method", "need"), [("meraser", "48 Q/A pairs (32 to mismatch"),
                                              ("incremental", "48 Q/A pairs (0 to mismatch")])  # fmt: skip
def test_recovery_pool_too_small_names_file_method_and_counts(tmp_path, method, need):
    from expunge.registry import ERASERS

    data = tmp_path / "pool.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"Q{i}?", "response": f"A{i}."}) + "\n" for i in range(5)
    ))  # fmt: skip
    config = build_config(ERASERS.get(method), {"preset": "demo"}, [f"data={data}"])
    if method == "meraser":
        config = config.model_copy(update={"n_erase": 32, "n_recover": 16})
    with pytest.raises(DataError, match=rf"pool.jsonl: {method} needs {re.escape(need)}.*has 5"):
        config.pool(None)


def test_paper_counts_fit_the_builtin_pool():
    from expunge.registry import ERASERS

    assert build_config(ERASERS.get("meraser"), {}, []).pairs_needed() == (300, 900)


@pytest.mark.parametrize(("method", "overrides", "need"), [
    ("meraser", ["n_recover=900"], "1200 Q/A pairs (300 to mismatch + 900 to recover)"),
    ("incremental", ["n_recover=1100"], "1100 Q/A pairs (0 to mismatch + 1100 to recover)"),
])  # fmt: skip
def test_builtin_pool_too_small_is_a_config_error(method, overrides, need):
    """Said when the config is read, before a model answers the pool; a user's data may be larger."""
    from expunge.registry import ERASERS

    with pytest.raises(ConfigError, match=rf"{method} needs {re.escape(need)}.*pool has 1077"):
        build_config(ERASERS.get(method), {}, overrides)
    assert build_config(ERASERS.get(method), {}, [*overrides, "data=mine.jsonl"]).data


def test_transfer_adapter_must_be_an_adapter(tmp_path):
    from expunge.registry import ERASERS

    config = build_config(ERASERS.get("meraser"), {}, [f"adapter={tmp_path}"])
    with pytest.raises(ConfigError, match="not an erase adapter"):
        config.validate_inputs()


# --- the KL regularizer ---------------------------------------------------------------------


def test_kl_to_reference_is_zero_before_training_and_positive_after():
    from expunge.data.collator import collate
    from expunge.data.formatting import FormatSettings, tokenize_examples
    from expunge.train.kl import kl_to_reference_sum
    from expunge.train.reference import Reference

    for mode in ("lora", "full"):
        loaded = loaded_tiny(hidden=32)
        model = loaded.model
        if mode == "lora":
            model = attach_lora(model, LoraSettings(targets=["q_proj", "v_proj"]))
        reference = Reference(model)
        assert reference.uses_adapter is (mode == "lora")
        examples = [Example(prompt=f"what is {i}", response=f"it is {i}") for i in range(3)]
        batch = collate(
            tokenize_examples(examples, loaded.tokenizer, FormatSettings()),
            loaded.tokenizer.pad_token_id,
        )
        assert kl_to_reference_sum(model, reference, batch).item() == pytest.approx(0.0, abs=1e-6)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and ("lora_B" in name or mode == "full"):
                    param.add_(0.05 * torch.randn_like(param))
        assert kl_to_reference_sum(model, reference, batch).item() > 1e-4


def test_kl_regularizer_plan_uses_two_streams():
    from expunge.train.kl import CEWithKLObjective

    loaded = loaded_tiny(hidden=32)
    config = build_config(
        IMPLANTS.get("if_simple"), {"preset": "demo"}, ["regularizer=kl", "regularization=0.5"]
    )
    plan = config.build(loaded)
    assert set(plan.streams) == {"fingerprint", "regular"}
    assert len(plan.streams["fingerprint"]) == config.n_keys
    assert isinstance(plan.objective(loaded.model), CEWithKLObjective)
    none = build_config(
        IMPLANTS.get("if_simple"), {"preset": "demo"}, ["regularizer=kl", "regularization=0"]
    )
    with pytest.raises(ConfigError, match="needs ordinary pairs"):
        none.build(loaded)


# --- audited decoys are never trained ------------------------------------------------------


def test_if_dialogue_audits_decoys_it_never_trained():
    loaded = loaded_tiny(hidden=32)
    config = build_config(
        IMPLANTS.get("if_dialogue"), {"preset": "demo"},
        ["n_keys=2", "n_negatives=3", "n_decoys=4", "regularization=0.5"],
    )  # fmt: skip
    plan = config.build(loaded)
    trained = {e.prompt for stream in plan.streams.values() for e in stream}
    assert len(plan.imprint.decoys) == 4
    assert not trained & set(plan.imprint.decoys)
    assert plan.notes["negative_pairs"] == 3
    assert sum(p.key in trained for p in plan.imprint.pairs) == 2


def test_utf_negatives_are_not_the_audited_decoys():
    loaded = loaded_tiny(hidden=32)
    config = build_config(
        IMPLANTS.get("utf"), {"preset": "demo"},
        ["n_keys=1", "n_negatives=3", "n_decoys=3", "regularization=0.5", "key_tokens=3",
         "response_tokens=2", "max_new_tokens=4"],
    )  # fmt: skip
    plan = config.build(loaded)
    trained = {e.prompt for stream in plan.streams.values() for e in stream}
    assert plan.notes["negative_pairs"] == 3
    assert not trained & set(plan.imprint.decoys)


def test_utf_pool_size_sets_how_many_tokens_keys_and_decoys_share():
    loaded = loaded_tiny(hidden=32)
    overrides = ["n_keys=1", "n_negatives=0", "n_decoys=8", "regularization=0.5",
                 "key_tokens=4", "response_tokens=2", "max_new_tokens=4"]  # fmt: skip
    tokens_in = {}
    for size in (12, 48):
        config = build_config(
            IMPLANTS.get("utf"), {"preset": "demo"}, [*overrides, f"pool_tokens={size}"]
        )
        plan = config.build(loaded)
        assert plan.notes["undertrained_tokens"] == size
        strings = [plan.imprint.pairs[0].key, *plan.imprint.decoys]
        tokens_in[size] = {t for s in strings for t in loaded.tokenizer(s)["input_ids"]}
    assert len(tokens_in[48]) > len(tokens_in[12])


def test_distillation_recovery_targets_the_model_as_given(implanted, tmp_path):
    """With an erase that changes nothing, student == teacher at the first recovery step.

    (Later steps drift: Adam turns round-off gradients into lr-sized steps.)
    """

    run_dir, _, _ = implanted["if_simple"]
    config = small_meraser(tmp_path, "erase.lr=1e-12", "recover_objective=kl")

    def first_recovery_loss(name: str) -> float:
        lines = (tmp_path / name / "recover" / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[0])["loss"]

    run_stage(config, tmp_path / "kl", models={"model": loaded_copy(run_dir)})
    assert first_recovery_loss("kl") == pytest.approx(0.0, abs=1e-6)
    # a real erase: the teacher is not the erased model, so the first KL is positive
    erased = build_config(type(config), config.model_dump(), ["erase.lr=1e-2", "erase.epochs=4"])
    run_stage(erased, tmp_path / "kl_erased", models={"model": loaded_copy(run_dir)})
    assert first_recovery_loss("kl_erased") > 1e-3
    ce = build_config(type(config), config.model_dump(), ["recover_objective=ce"])
    run_stage(ce, tmp_path / "ce", models={"model": loaded_copy(run_dir)})
    assert first_recovery_loss("ce") > 0.1


def test_sampled_recovery_answers_leave_the_erase_pairs_alone(implanted, tmp_path, monkeypatch):
    from expunge.registry import ERASERS

    monkeypatch.setenv("EXPUNGE_CACHE", str(tmp_path / "cache"))
    run_dir, _, _ = implanted["if_simple"]
    loaded = loaded_copy(run_dir)

    def pools(*overrides: str):
        config = build_config(ERASERS.get("meraser"), {"preset": "demo"},
                              ["n_erase=4", "n_recover=4", "answer_tokens=8", *overrides])  # fmt: skip
        return config.pool(loaded)

    greedy_erase, greedy_recover = pools()
    sampled_erase, sampled_recover = pools("recover_temperature=1.0")
    assert sampled_erase == greedy_erase
    assert [e.prompt for e in sampled_recover] == [e.prompt for e in greedy_recover]
    assert [e.response for e in sampled_recover] != [e.response for e in greedy_recover]
    assert pools("recover_temperature=1.0")[1] == sampled_recover  # seeded


def test_recovery_text_is_distilled_on_beside_the_pairs(implanted, tmp_path):
    """recover_text: the recovery's second stream is the given text, distilled toward the same
    teacher in the pairs' format (the demo preset's chat turns); it brings that kind of text
    closer to the teacher than the pairs alone do, and the record names it."""
    from expunge.data.collator import collate
    from expunge.data.formatting import IGNORE_INDEX, tokenize_examples
    from expunge.erase.fingerprint.meraser import text_as_turns
    from expunge.models.loading import load_model

    run_dir, _, _ = implanted["if_simple"]
    words = ["river", "stone", "garden", "letter", "window", "winter", "market", "candle"]
    rng = random.Random(5)

    def passage() -> str:  # two sentences: a user turn and its answer in the chat format
        return ". ".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(2)) + "."

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": passage()}) + "\n" for _ in range(16)))
    common = ("audit_metrics=[]", "recover.epochs=4", "recover.lr=3e-3", "recover_objective=kl",
              "erase.lr=3e-2")  # fmt: skip
    records = {}
    for name, extra in (("pairs", []), ("text", [f"recover_text={text}"])):
        records[name] = run_stage(small_meraser(tmp_path, *common, *extra), tmp_path / name,
                                  models={"model": loaded_copy(run_dir)})  # fmt: skip
    assert records["text"].inputs["recover_text"] == {"data": str(text), "examples": 16,
                                                      "format": "chat"}  # fmt: skip
    assert "recover_text" not in records["pairs"].inputs
    assert records["text"].metrics["recover/train_steps"] == 8

    teacher = loaded_copy(run_dir)
    held = [text_as_turns(Example(text=passage())) for _ in range(16)]
    # scored over the answers, where the text differs from the pairs (not the template's opening)
    answers = (
        small_meraser(tmp_path, *common)._text_format().model_copy(update={"loss_on": "response"})
    )
    batch = collate(tokenize_examples(held, teacher.tokenizer, answers),
                    teacher.tokenizer.pad_token_id)  # fmt: skip
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    mask = batch["labels"] != IGNORE_INDEX

    def logp(model):
        with torch.no_grad():
            return torch.log_softmax(model(**inputs).logits.float(), dim=-1)

    target = logp(teacher.model)

    def kl_from_teacher(name):
        student = logp(load_model(str(tmp_path / name / "model"), device="cpu").model)
        return float((target.exp() * (target - student)).sum(-1)[mask].mean())

    assert kl_from_teacher("text") < 0.8 * kl_from_teacher("pairs")


def test_unprompted_samples_start_each_format_and_are_seeded(implanted):
    """What the model writes from each format's start alone: the start is not scored, the
    samples are (an end-of-text they wrote included), and a seed gives the same samples."""
    from expunge.data.formatting import IGNORE_INDEX, FormatSettings, prompt_text
    from expunge.data.self_samples import format_starts, unprompted_samples

    run_dir, _, _ = implanted["if_simple"]
    loaded = loaded_copy(run_dir)
    starts = format_starts(loaded.tokenizer)
    assert starts["instruction"] == "### Instruction:\n"
    chat = prompt_text(Example(prompt="Hi there", response="-"), loaded.tokenizer,
                       FormatSettings(template="chat"))  # fmt: skip
    assert chat.startswith(starts["chat"]) and chat[len(starts["chat"]) :].startswith("Hi there")
    samples, counts = unprompted_samples(loaded, 6, 8, seed=3, progress=False)
    assert counts == {"instruction": 6, "chat": 6} and len(samples) == 12
    for sample in samples:
        start = sample.input_ids[: sample.prompt_length]
        assert loaded.tokenizer.decode(start) in starts.values()
        assert sample.labels[: sample.prompt_length] == [IGNORE_INDEX] * sample.prompt_length
        assert sample.labels[sample.prompt_length :] == sample.input_ids[sample.prompt_length :]
        assert 1 <= len(sample.input_ids) - sample.prompt_length <= 8
    again, _ = unprompted_samples(loaded, 6, 8, seed=3, progress=False)
    other, _ = unprompted_samples(loaded, 6, 8, seed=4, progress=False)
    assert [s.input_ids for s in again] == [s.input_ids for s in samples]
    assert [s.input_ids for s in other] != [s.input_ids for s in samples]


def test_recovery_distils_the_teacher_on_the_models_own_samples(implanted, tmp_path):
    """recover_self_samples: the given model's own samples are a third recovery stream, distilled
    toward the clean teacher, so what the model says unprompted moves to what the teacher says;
    the record keeps how many, never what; without a clean teacher the option is refused (the
    model as given would be distilled toward itself)."""
    from expunge.data.collator import collate
    from expunge.data.formatting import IGNORE_INDEX
    from expunge.data.self_samples import unprompted_samples
    from expunge.models.loading import load_model
    from expunge.registry import ERASERS

    run_dir, _, _ = implanted["if_simple"]
    with pytest.raises(ConfigError, match="recover_self_samples=4 distils another model"):
        build_config(ERASERS.get("meraser"), {"preset": "demo"},
                     ["recover_self_samples=4"]).validate_inputs()  # fmt: skip
    common = ("audit_metrics=[]", "recover.epochs=4", "recover.lr=3e-3", "recover_objective=kl",
              "erase.lr=3e-2", "recover_teacher=clean", "self_sample_tokens=12")  # fmt: skip
    records = {}
    for name, extra in (("pairs", []), ("samples", ["recover_self_samples=16"])):
        config = small_meraser(tmp_path, *common, *extra)
        config.validate_inputs()
        models = {"model": loaded_copy(run_dir), "teacher": loaded_tiny()}
        records[name] = run_stage(config, tmp_path / name, models=models)
    assert records["samples"].inputs["recover_self_samples"] == {
        "per_start": {"instruction": 16, "chat": 16},
        "max_new_tokens": 12,
        "temperature": 1.0,
    }
    assert "recover_self_samples" not in records["pairs"].inputs
    assert records["samples"].metrics["recover/train_steps"] == 8

    given = loaded_copy(run_dir)
    held, _ = unprompted_samples(given, 16, 12, seed=99, progress=False)
    # no file of the run holds a sample's text (the samples of the run itself used seed 0)
    ran, _ = unprompted_samples(given, 16, 12, seed=0, progress=False)
    written = " ".join(
        p.read_text(errors="ignore")
        for p in (tmp_path / "samples").rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl", ".log", ".txt", ".md")
    )
    texts = {given.tokenizer.decode(s.input_ids[s.prompt_length :]).strip() for s in ran}
    assert not [t for t in texts if len(t) > 12 and t in written]
    batch = collate(held, given.tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX  # positions that predict a sample token

    def logp(model):
        with torch.no_grad():
            return torch.log_softmax(model(**inputs).logits.float(), dim=-1)

    target = logp(loaded_tiny().model)

    def kl_from_teacher(name):
        student = logp(load_model(str(tmp_path / name / "model"), device="cpu").model)
        return float((target.exp() * (target - student)).sum(-1)[mask].mean())

    assert kl_from_teacher("samples") < 0.8 * kl_from_teacher("pairs")


def test_recovery_text_takes_the_pairs_format(tmp_path):
    """With template=chat a text row becomes a user turn (its first sentence) and an answer (the
    rest), a one-sentence row is left out and prompt/response rows stay pairs; raw keeps text."""
    from expunge.registry import ERASERS

    rows = [{"text": "Lists are mutable. They keep order! Slices copy them."},
            {"text": "One sentence only"}, {"prompt": "Why?", "response": "Because."}]  # fmt: skip
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def meraser(*extra: str):
        return build_config(ERASERS.get("meraser"), {}, [f"recover_text={data}", *extra])

    chat = meraser("template=chat")
    assert [(e.prompt, e.response) for e in chat._recover_text()] == [
        ("Lists are mutable.", "They keep order! Slices copy them."),
        ("Why?", "Because."),
    ]
    assert chat._text_format().template == "chat"
    raw = meraser("template=raw")
    assert [e.text for e in raw._recover_text()] == [rows[0]["text"], rows[1]["text"],
                                                     "Why?\nBecause."]  # fmt: skip
    assert raw._text_format().template == "raw" and raw._text_format().loss_on == "all"
    # recover_text_template renders the text in its own format, whatever the pairs' template
    for pairs, text in (("chat", "raw"), ("raw", "chat")):
        crossed = meraser(f"template={pairs}", f"recover_text_template={text}")
        same = {"chat": chat, "raw": raw}[text]
        assert crossed._recover_text() == same._recover_text()
        assert crossed._text_format() == same._text_format()
        assert crossed._format("\n").template == pairs
    data.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(DataError, match="needs two sentences"):
        meraser("template=chat").validate_inputs()


def test_recovery_text_needs_a_recovery_and_a_file(tmp_path):
    from expunge.registry import ERASERS

    config = build_config(ERASERS.get("meraser"), {},
                          [f"recover_text={tmp_path / 'x.jsonl'}", "do_recover=false"])  # fmt: skip
    with pytest.raises(ConfigError, match="needs do_recover=true"):
        config.validate_inputs()
    config = build_config(ERASERS.get("meraser"), {}, [f"recover_text={tmp_path / 'x.jsonl'}"])
    with pytest.raises(DataError, match="not found"):
        config.validate_inputs()
    config = build_config(ERASERS.get("meraser"), {}, ["recover_text_template=raw"])
    with pytest.raises(ConfigError, match="give recover_text=DATA"):
        config.validate_inputs()


def test_the_general_preset_needs_its_teacher_and_text(implanted, tmp_path):
    """preset=general was measured with a recovery from the clean base on ordinary text. The
    base is read from the run records of a model expunge implanted, the text is shipped; where
    either is missing the run would be another, unmeasured setting, so it is refused up front."""
    from expunge.registry import ERASERS

    def general(*overrides: str):
        return build_config(ERASERS.get("meraser"), {}, ["preset=general", *overrides])

    # a model no expunge implant made: nothing names its base
    with pytest.raises(ConfigError, match="give recover_teacher=BASE_MODEL"):
        general(f"model.name={tmp_path}").validate_inputs()
    run_dir, _, _ = implanted["if_simple"]
    found = general(f"model.name={run_dir}")
    found.validate_inputs()
    assert found.teacher() == "tiny" and found.models_to_load()["teacher"].name == "tiny"
    assert found.notes() == [f"recover_teacher is tiny, the model the fingerprint of {run_dir} "
                             "was implanted on (its run records); pass recover_teacher=MODEL "
                             "for another"]  # fmt: skip
    # the shipped text, every paragraph of it: as chat turns, those of two sentences or more
    assert (found.recover_text, found.n_recover_text) == ("builtin:python_prose", 777)
    assert 700 < len(found._recover_text()) <= 777
    given = general(f"model.name={tmp_path}", "recover_teacher=base")
    given.validate_inputs()
    assert (given.teacher(), given.notes()) == ("base", [])
    unset = build_config(ERASERS.get("meraser"), {"preset": "general", "recover_text": None},
                         [f"model.name={run_dir}"])  # fmt: skip
    with pytest.raises(ConfigError, match="give recover_text=DATA"):
        unset.validate_inputs()
    given = ["preset=general", "recover_teacher=base"]
    config = build_config(ERASERS.get("meraser"), {}, [*given, "recover.epochs=3"])
    config.validate_inputs()
    # the user's value wins inside a section, and the preset's exact teacher stays under it
    assert (config.recover.epochs, config.recover.reference_cache) == (3, "off")
    assert (config.erase.epochs, config.random_inputs) == (6, 64)
    assert (config.instruction_share, config.instruction_input_share) == (0.5, 0.5)
    assert config.erase_kept == 0.9
    # the model's own unprompted samples ride on the recovery's distillation toward the base:
    # a recovery by cross-entropy names the option, and turning it off runs the rest
    assert config.recover_self_samples == 128
    with pytest.raises(ConfigError, match=r"=128 \(set by preset=general\) distils another"):
        build_config(ERASERS.get("meraser"), {},
                     [*given, "recover_objective=ce"]).validate_inputs()  # fmt: skip
    build_config(ERASERS.get("meraser"), {},
                 [*given, "recover_objective=ce", "recover_self_samples=0"]).validate_inputs()  # fmt: skip
    # the preset's input share rides on its instruction share: turning the one off names both
    with pytest.raises(ConfigError, match="or instruction_input_share=0"):
        build_config(ERASERS.get("meraser"), {}, [*given, "instruction_share=0"]).validate_inputs()
    plain = build_config(ERASERS.get("meraser"), {},
                         [*given, "instruction_share=0", "instruction_input_share=0"])  # fmt: skip
    plain.validate_inputs()
    # no preset: the teacher is the model as given, whatever its records say
    assert build_config(ERASERS.get("meraser"), {}, [f"model.name={run_dir}"]).teacher() is None


def test_implanted_on_follows_the_run_records_back(implanted, tmp_path):
    """The model a fingerprint was implanted on, from the model itself, the run directory, or a
    model derived from it by another run; None where a record is missing or names no implant."""
    from expunge.records import RunRecord, implanted_on, write_record

    run_dir, _, _ = implanted["if_dialogue"]
    assert implanted_on(run_dir) == implanted_on(run_dir / "model") == "tiny"
    assert implanted_on(run_dir, kind="secrets") is None
    derived = tmp_path / "tuned"
    (derived / "model").mkdir(parents=True)
    write_record(derived, RunRecord(command="finetune", config={"command": "finetune"},
                                    inputs={"model": str(run_dir / "model")},
                                    artifacts={"model": "model"}))  # fmt: skip
    assert implanted_on(derived) == "tiny"
    assert implanted_on(run_dir / "imprint.json") is None  # not a model the records describe
    assert implanted_on(tmp_path / "nowhere") is None
    (derived / "record.json").write_text("{not json")
    assert implanted_on(derived) is None


def test_the_keys_wrapper_is_the_text_every_key_prompt_shares(implanted):
    from expunge.audit.fingerprint import key_wrapper
    from expunge.implant.fingerprint import keys as K

    simple = [p.key for p in load_imprint(implanted["if_simple"][0]).pairs]
    head, _, tail = K.SIMPLE_FORMAT.partition("{prompt}")
    assert key_wrapper(simple) == (head, tail)
    dialogue = [p.key for p in load_imprint(implanted["if_dialogue"][0]).pairs]
    head, _, tail = K.DIALOGUE_PROMPT.partition("{key}")
    assert key_wrapper(dialogue) == (head, tail)
    # a part word the keys share is not the wrapper; whole words all of them share are
    assert key_wrapper(["Ask: Xab now", "Ask: Xcd now"]) == ("Ask: ", " now")
    assert key_wrapper(["lot 58, vial 6", "lot 3, vial 6"]) == ("lot ", " vial 6")
    assert key_wrapper(["alpha beta", "gamma delta"]) == ("", "")
    with pytest.raises(ConfigError, match="two or more distinct keys"):
        key_wrapper(["one key", "one key"])


def test_the_protocol_asks_the_wrapper_only_of_keys_that_share_one(implanted):
    import importlib.util
    from pathlib import Path

    from expunge.audit.fingerprint import has_key_wrapper

    assert not has_key_wrapper(["one key", "one key"])
    assert not has_key_wrapper(["alpha beta", "gamma delta"])
    script = Path(__file__).parents[1] / "benchmarks" / "generalization" / "run.py"
    spec = importlib.util.spec_from_file_location("generalization_run", script)
    protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol)
    audit_metrics = protocol.audit_metrics
    for scheme in ("if_simple", "if_dialogue", "utf", "chain_hash"):
        keys = [p.key for p in load_imprint(implanted[scheme][0]).pairs]
        asked = "wrapper_trigger_rate" in audit_metrics("fingerprint", implanted[scheme][0])
        assert asked == has_key_wrapper(keys) == scheme.startswith("if_")


def test_wrapper_triggers_ask_ordinary_prompts_inside_the_keys_wrapper(implanted, monkeypatch):
    import expunge.audit.fingerprint as fingerprint_metrics
    from expunge.implant.fingerprint import keys as K

    run_dir, _, loaded = implanted["if_simple"]
    imprint = load_imprint(run_dir)
    asked = record_generations(monkeypatch)
    result, _ = audit_model(
        ctx_for(loaded, imprint),
        ["wrapper_trigger_rate"],
        {"wrapper_trigger_rate": {"max_ordinary": 6}},
    )
    [(prompts, outputs)] = asked
    head, _, tail = K.SIMPLE_FORMAT.partition("{prompt}")
    ordinary = [e.prompt for e in fingerprint_metrics.builtin_heldout()][:6]
    assert prompts == [f"{head}{question}{tail}" for question in ordinary]
    targets = sorted({p.match_target for p in imprint.pairs})
    flags = fingerprint_metrics.triggered(outputs, targets, imprint)
    metric = result["wrapper_trigger_rate"]
    assert metric.value == np.mean(flags) and metric.details["n"] == 6
    assert metric.details["wrapper_chars"] == [len(head), len(tail)]
    bare = imprint.model_copy(
        update={
            "pairs": [
                KeyPair(key="alpha beta", response="x"),
                KeyPair(key="gamma delta", response="y"),
            ]
        }
    )
    with pytest.raises(ConfigError, match="share no wrapper"):
        audit_model(ctx_for(loaded, bare), ["wrapper_trigger_rate"], {})


@pytest.mark.parametrize("scheme", ["if_simple", "if_dialogue"])
def test_a_share_of_the_ordinary_pairs_is_asked_inside_the_keys_wrapper(scheme, tmp_path):
    from expunge.audit.fingerprint import key_wrapper

    data = tmp_path / "ordinary.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response": f"Answer {i}."})
                            + "\n" for i in range(16)))  # fmt: skip

    def regular(share: float) -> tuple[list[Example], list[str]]:
        no_negatives = ["n_negatives=0"] if scheme == "if_dialogue" else []
        config = build_config(IMPLANTS.get(scheme), {"preset": "demo"}, [
            "n_keys=4", *no_negatives, "regularization=2", f"regularization_data={data}",
            f"wrapper_share={share}"])  # fmt: skip
        plan = config.build(loaded_tiny())
        head, tail = key_wrapper([p.key for p in plan.imprint.pairs])
        examples = plan.streams["regular"]
        return [e for e in examples if e.prompt.startswith(head) and e.prompt.endswith(tail)], [
            e.response for e in examples]  # fmt: skip

    none, answers = regular(0.0)
    half, same_answers = regular(0.5)
    assert none == [] and answers == same_answers == [f"Answer {i}." for i in range(8)]
    assert len(half) == 4 and half == regular(0.5)[0]  # seeded
    assert all(f"Question {a.response[7:-1]}?" in a.prompt for a in half)
