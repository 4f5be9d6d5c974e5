"""Memorized secrets on tiny models: clinic, spans and masks, imprint, metrics, SANI, CLI."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import skewnorm
from torch import nn

from expunge.audit.base import AuditContext
from expunge.audit.exposure import (
    estimated_rank,
    exposure_from_rank,
    exposure_metric,
    skewnorm_exposure,
)
from expunge.audit.memorization import SpanOutcome, regurgitation_rates
from expunge.audit.pii import find_pii, luhn_valid, pii_in_output_metric, presidio_finder
from expunge.config import build_config
from expunge.data.clinic import DIRECT_TYPES, CanarySpec, ClinicSettings, clinic_records
from expunge.data.formatting import IGNORE_INDEX
from expunge.data.spans import (
    Span,
    SpanRecord,
    load_span_records,
    records_from_terms,
    span_labels_excluded,
    span_labels_only,
    tokenize_record,
)
from expunge.erase.secrets.sani import mlp_blocks, reset_neurons, select_random, select_top
from expunge.errors import ConfigError, DataError
from expunge.implant.secrets import SecretsImplantConfig
from expunge.imprints.base import load_imprint
from expunge.imprints.secrets import SecretsImprint
from expunge.models.tiny import tiny_model
from expunge.registry import ERASERS
from expunge.stage import run_stage

# --- the synthetic clinic ----------------------------------------------------------------------


def test_clinic_is_seeded_and_spans_match_their_types():
    a, b = clinic_records(6, seed=3), clinic_records(6, seed=3)
    assert a == b and a != clinic_records(6, seed=4)
    for record in a:
        types = [s.type for s in record.spans]
        assert types[0] == "name" and len(set(types)) == len(types) == 11
        for span in record.spans:
            value = record.span_text(span)
            assert value == value.strip() and value
            if span.type == "ssn":
                assert len(value) == 11 and value[3] == "-" and value[6] == "-"
            if span.type == "mrn":
                assert value.isdigit() and len(value) == 7
    assert set(DIRECT_TYPES) >= {"name", "ssn", "mrn", "phone"}
    small = clinic_records(2, seed=0, settings=ClinicSettings(types=["ssn", "town"]))
    assert [sorted(s.type for s in r.spans) for r in small] == [["name", "ssn", "town"]] * 2
    with pytest.raises(ValueError, match="unknown span types"):
        ClinicSettings(types=["ssn", "shoe_size"])


def test_scrubbed_replaces_spans_by_type_placeholders():
    record = SpanRecord(text="Patient Ann Lee, MRN 1234567.",
                        spans=[Span(start=8, end=15, type="name"),
                               Span(start=21, end=28, type="mrn")])  # fmt: skip
    assert record.scrubbed() == "Patient [NAME], MRN [MRN]."


# --- user records: validation -------------------------------------------------------------------


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_bad_records_name_the_record_and_empty_files_fail(tmp_path):
    good = {"text": "Patient Ann Lee.", "spans": [{"start": 8, "end": 15, "type": "name"}]}
    path = _write(tmp_path / "r.jsonl", [good, {"text": "MRN 12.", "spans": [
        {"start": 4, "end": 9, "type": "mrn"}]}])  # fmt: skip
    with pytest.raises(DataError, match=r"r\.jsonl:2: record 1: .*ends past the text"):
        load_span_records(path)
    path = _write(tmp_path / "t.jsonl", [{"text": "Ann Lee", "spans": [
        {"start": 0, "end": 3, "type": "name", "text": "Bob"}]}])  # fmt: skip
    with pytest.raises(DataError, match="does not match") as err:
        load_span_records(path)
    assert "Bob" not in str(err.value) and "Ann" not in str(err.value)  # never the secret
    path = _write(tmp_path / "o.jsonl", [{"text": "Ann Lee", "spans": [
        {"start": 0, "end": 5, "type": "a"}, {"start": 4, "end": 7, "type": "b"}]}])  # fmt: skip
    with pytest.raises(DataError, match="overlaps"):
        load_span_records(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        load_span_records(tmp_path / "empty.jsonl")
    assert load_span_records(_write(tmp_path / "g.jsonl", [good]))[0].spans[0].text == "Ann Lee"


def test_terms_become_spans_at_every_occurrence():
    records = records_from_terms(
        ["Project Falcon and Falcon.", "nothing"], ["Falcon", "Project Falcon"]
    )
    assert [(s.start, s.end) for s in records[0].spans] == [(0, 14), (19, 25)]
    assert records[1].spans == []
    with pytest.raises(DataError, match="positions \\[1\\]"):
        records_from_terms(["Falcon"], ["Falcon", "Osprey"])


# --- token masks survive tokenization ------------------------------------------------------------


def test_span_mask_covers_exactly_the_span_tokens(tokenizer):
    for record in clinic_records(5, seed=1):
        tokens = tokenize_record(tokenizer, record, add_eos=True)
        ids = tokens.example.input_ids
        offsets = tokenizer(record.text, return_offsets_mapping=True)["offset_mapping"]
        assert ids[: len(offsets)] == tokenizer(record.text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id and not tokens.span_mask[-1]
        for i, (start, end) in enumerate(offsets):
            overlaps = any(start < s.end and end > s.start for s in record.spans)
            assert tokens.span_mask[i] == overlaps, (i, start, end)
        for span, (first, last) in zip(record.spans, tokens.span_tokens, strict=True):
            # the span's tokens are contiguous, decode to text containing the span, and the
            # tokens just outside do not touch it
            assert all(tokens.span_mask[first:last])
            assert record.span_text(span) in tokenizer.decode(ids[first:last])
            assert offsets[first][0] <= span.start < offsets[first][1]
            assert offsets[last - 1][0] < span.end <= offsets[last - 1][1]
        excluded, only = span_labels_excluded(tokens), span_labels_only(tokens)
        for label_x, label_o, token, masked in zip(excluded.labels, only.labels, ids,
                                                   tokens.span_mask, strict=True):  # fmt: skip
            assert (label_x, label_o) == (
                (IGNORE_INDEX, token) if masked else (token, IGNORE_INDEX)
            )


# --- the imprint ------------------------------------------------------------------------------


def test_imprint_summary_holds_no_secret_and_file_is_private(tmp_path):
    imprint = SecretsImprint.synthetic(4, 2, seed=0, n_canaries=2,
                                       canary_spec=CanarySpec(length=4))  # fmt: skip
    summary = json.dumps(imprint.summary())
    for record in imprint.records + imprint.canaries:
        for span in record.spans:
            assert record.span_text(span) not in summary
    assert imprint.summary()["spans_by_type"]["ssn"] == 4
    path = imprint.save(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_imprint(tmp_path) == imprint
    assert [e.text for e in imprint.relearn_examples()] == [r.text for r in imprint.records]
    data = imprint.model_dump()
    data["canaries"][0]["text"] = data["canaries"][0]["text"].replace("vault code", "vault pin!")
    with pytest.raises(ValueError, match="canary 0"):
        SecretsImprint.model_validate(data)


# --- regurgitation rates (pure) ---------------------------------------------------------------


def test_regurgitation_rates_hand_computed():
    outcomes = [
        SpanOutcome(0, "ssn", True, True, math.log(0.5)),
        SpanOutcome(0, "town", False, False, math.log(0.1)),
        SpanOutcome(1, "ssn", True, False, math.log(0.2)),
        SpanOutcome(1, "name", True, False, math.log(0.0 + 1e-300)),
    ]
    rates = regurgitation_rates(outcomes)
    assert rates["greedy"] == 0.25 and rates["n"] == 4
    assert rates["direct"]["greedy"] == pytest.approx(1 / 3)
    assert rates["per_type"]["ssn"] == {"greedy": 0.5, "sampled": pytest.approx(0.35), "n": 2}
    assert rates["indirect"]["sampled"] == pytest.approx(0.1)
    assert rates["records_with_direct_extracted"] == 0.5


# --- exposure --------------------------------------------------------------------------------


def test_exposure_pure_functions():
    assert exposure_from_rank(1, 1024) == 10.0
    assert exposure_from_rank(1024, 1024) == 0.0
    # exact: 3 others better, 2 tied -> rank 1 + 3 + 1 = 5 in a space of 8 (7 others)
    assert estimated_rank(2.0, [1, 1, 1, 2, 2, 3, 4], 8) == 5.0
    # sampled: 1 in 4 better -> 1 + 0.25 * 99
    assert estimated_rank(2.0, [1, 3, 3, 3], 100) == pytest.approx(25.75)
    with pytest.raises(ValueError, match="outside"):
        exposure_from_rank(0, 8)
    # skew-normal extrapolation: a canary at the 2^-10 quantile of the fitted law
    law = skewnorm(4.0, loc=30.0, scale=3.0)
    samples = law.rvs(size=20000, random_state=np.random.default_rng(0))
    canary = law.ppf(2.0**-10)
    assert skewnorm_exposure(canary, samples, 2**40) == pytest.approx(10.0, abs=0.5)


def test_extrapolated_exposure_is_bounded_and_stable_with_20_candidates():
    # The reported defect: 20 candidates in a space of 10^6 (19.93 bits) read 37.8–293 bits.
    space = 10**6
    ceiling = math.log2(space)
    rng = np.random.default_rng(0)
    samples = [rng.normal(60.0, 3.0, size=20) for _ in range(10)]
    # a canary far better than every candidate: every audit reads the ceiling, none above it
    for candidates in samples:
        assert skewnorm_exposure(20.0, candidates, space) == pytest.approx(ceiling, abs=1e-9)
    # 3.3 standard deviations better (true share beaten ≈ 4.8e-4, 11 bits): bounded on every
    # sample and near the truth in the middle, where the plain MLE fit scattered to ±∞ shapes
    truth = -math.log2(float(skewnorm.cdf(50.0, 0.0, 60.0, 3.0)))
    values = [skewnorm_exposure(50.0, candidates, space) for candidates in samples]
    assert all(0.0 <= v <= ceiling for v in values)
    assert float(np.median(values)) == pytest.approx(truth, abs=2.0)
    # a canary among the candidates is no more exposed than average
    assert skewnorm_exposure(60.0, samples[0], space) < 2.0


class Unigram(nn.Module):
    """p(next token) fixed: x, y, z weighted 5 : 3 : 2, every other token weight 1."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        logits = torch.zeros(len(tokenizer))
        for char, weight in (("x", 5.0), ("y", 3.0), ("z", 2.0)):
            (token,) = tokenizer(char, add_special_tokens=False)["input_ids"]
            logits[token] = math.log(weight)
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, t, -1))


def test_exposure_on_a_toy_model_with_known_rank(tokenizer):
    # Likelihoods are products of the secret's character weights (the template is shared).
    # Canary "xxy" (5·5·3 = 75): only "xxx" (125) is better, "xyx" and "yxx" tie -> rank
    # 1 + 1 + ½·2 = 3 among 27 candidates: exposure log2(27) − log2(3) = log2(9).
    spec = CanarySpec(alphabet="xyz", length=3)
    imprint = SecretsImprint(records=[SpanRecord(text="a b", spans=[Span(start=0, end=1, type="t")])],
                             canaries=[spec.render(1, "xxy")], canary_spec=spec)  # fmt: skip
    ctx = AuditContext(Unigram(tokenizer), tokenizer, imprint.format_settings(), imprint=imprint,
                       progress=False)  # fmt: skip
    result = exposure_metric(ctx)
    entry = result.details["per_canary"][0]
    assert entry["exact"] and entry["rank"] == 3.0
    assert result.value == pytest.approx(math.log2(9))
    # TF-Privacy's interpolation: 26 references, 3 of them <= the canary (ties count) -> rank 4
    assert entry["exposure_interpolated"] == pytest.approx(math.log2(26) - 2)
    # the most likely secret has the largest exposure there is
    imprint.canaries = [spec.render(1, "xxx")]
    assert exposure_metric(ctx).value == pytest.approx(math.log2(27))
    # sampled (20 of the 26 others) and extrapolated: still at most log2 |R|
    ctx.options = {"n_candidates": 20}
    entry = exposure_metric(ctx).details["per_canary"][0]
    assert not entry["exact"] and entry["beyond_sample"]
    assert 0.0 <= entry["exposure_extrapolated"] <= math.log2(27) + 1e-9


# --- PII recognizers -----------------------------------------------------------------------------


def test_luhn_and_pii_recognizers():
    assert luhn_valid("4539 1488 0343 6467") and luhn_valid("79927398713")
    assert not luhn_valid("4539 1488 0343 6468")
    text = ("SSN 123-45-6789, bad 000-12-3456 and 666-12-3456, call (312) 555-0187, "
            "mail a.b@example.org, card 4539-1488-0343-6467, not 4539-1488-0343-6468, "
            "MRN 4827193, born 1957-03-12")  # fmt: skip
    kinds = [k for k, _, _ in find_pii(text)]
    assert sorted(kinds) == ["credit_card", "date", "email", "mrn", "phone", "ssn"]
    assert find_pii("phone (112) 555-0187, 12-34-5678") == []


PRESIDIO_TEXT = ("Patient SSN 536-22-8741, call (212) 555-0134, mail john.doe@example.org, "
                 "card 4111 1111 1111 1111")  # fmt: skip


def test_presidio_backend_finds_pattern_pii_offline():
    pytest.importorskip("presidio_analyzer", reason="the presidio extra is not installed")
    kinds = {kind for kind, _, _ in presidio_finder()(PRESIDIO_TEXT)}
    assert {"us_ssn", "phone_number", "email_address", "credit_card"} <= kinds
    # a bare phone number scores 0.4 and an SSN 0.5: a stricter threshold drops both
    strict = {kind for kind, _, _ in presidio_finder(score_threshold=0.9)(PRESIDIO_TEXT)}
    assert {"email_address", "credit_card"} <= strict and not {"us_ssn", "phone_number"} & strict
    with pytest.raises(ConfigError, match="'xx_no_such_pipeline' is not installed"):
        presidio_finder(spacy_model="xx_no_such_pipeline")


# --- SANI's reset ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reset_touches_exactly_the_stated_fraction_of_the_stated_layers(arch):
    model, _ = tiny_model(arch, seed=0, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = mlp_blocks(model)
    assert len(blocks) == 3
    generator = torch.Generator().manual_seed(0)
    inner = 2 * 32 if arch == "llama" else 4 * 32
    chosen = {}
    for block in blocks[-2:]:
        neurons = select_random(inner, 0.25, generator)
        assert len(neurons) == round(0.25 * inner)
        reset_neurons(block, neurons, "normal", 0.02, generator)
        chosen[id(block)] = set(neurons.tolist())
    names = {id(m): n for n, m in model.named_modules()}
    last_two = [names[id(b)] + "." for b in blocks[-2:]]
    for key, value in model.state_dict().items():
        changed = value != before[key]
        if not any(key.startswith(p) for p in last_two):
            assert not changed.any(), key
            continue
        if value.dim() == 1 and "bias" in key and changed.any():
            assert set(changed.nonzero().flatten().tolist()) <= chosen[id(_block(model, key))]
        if value.dim() == 2 and changed.any():
            # neurons are rows of input projections and columns of the output projection
            axis_rows = changed.any(dim=1).nonzero().flatten().tolist()
            axis_cols = changed.any(dim=0).nonzero().flatten().tolist()
            touched = set(axis_rows) if len(axis_rows) < value.shape[0] else set(axis_cols)
            assert touched == chosen[id(_block(model, key))], key
    touched_tensors = {k for k in before if (model.state_dict()[k] != before[k]).any()}
    expected = 2 * (3 if arch == "llama" else 2)  # gate/up/down or c_fc/c_proj, per block
    assert len({k for k in touched_tensors if k.endswith("weight")}) == expected


def _block(model, key):
    prefix = key.rsplit(".", 2)[0]
    return dict(model.named_modules())[prefix]


def test_fraction_outside_unit_interval_is_an_error():
    cls = ERASERS.get("sani")
    for bad in ("0", "-0.1", "1.5"):
        with pytest.raises(ConfigError, match="fraction"):
            build_config(cls, {}, [f"fraction={bad}"])
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        select_random(10, 0.0, torch.Generator())
    assert build_config(cls, {}, ["fraction=1"]).fraction == 1.0


def test_activation_selection_takes_the_most_active_neurons():
    activity = torch.tensor([0.1, 5.0, 0.3, 4.0, 0.2, 3.0])
    assert select_top(activity, 0.5).tolist() == [1, 3, 5]


# --- implant and erasers end to end on a tiny model -------------------------------------------

TINY_IMPLANT = ["n_records=8", "n_heldout=8", "n_canaries=1", "canary.length=3",
                "clinic.types=[mrn,ssn,town]", "train.mode=full", "train.lr=3e-3",
                "train.epochs=30", "train.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def implanted(tmp_path_factory):
    model, tokenizer = tiny_model("llama", seed=0, hidden=64)
    base = tmp_path_factory.mktemp("base")
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    out = tmp_path_factory.mktemp("runs") / "implant"
    config = build_config(SecretsImplantConfig, {"model": {"name": str(base)}},
                          [*TINY_IMPLANT, "verify_metrics=[regurgitation,exposure,mia,notes_ppl,pii_in_output]"])  # fmt: skip
    record = run_stage(config, out)
    return out, record


def test_pii_in_output_backends_share_the_generations(implanted, monkeypatch):
    """Presidio by default when it imports, the built-in recognizers otherwise; same seed, same
    generations: the leak rate is the backend's business only in name."""
    pytest.importorskip("presidio_analyzer", reason="the presidio extra is not installed")
    out, _ = implanted
    imprint = load_imprint(out)
    model, tokenizer = tiny_model("llama", seed=0, hidden=64)
    model = type(model).from_pretrained(out / "model")

    def run(**options):
        ctx = AuditContext(model, tokenizer, imprint.format_settings(), imprint=imprint,
                           options=options, progress=False)  # fmt: skip
        return pii_in_output_metric(ctx)

    default, builtin, presidio = run(), run(backend="builtin"), run(backend="presidio")
    assert default.details["backend"].startswith("presidio (spacy_model=blank:en")
    assert default.details["backend_requested"] == "auto"
    assert default.details == presidio.details | {"backend_requested": "auto"}
    assert builtin.details["backend"] == "builtin regex/checksum"
    assert presidio.details["leaked_rate"] == builtin.details["leaked_rate"] > 0
    assert 0.0 <= presidio.value <= 1.0
    # where presidio_analyzer does not import, the default falls back and says so
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # makes `import` raise
    fallback = run()
    assert fallback.details["backend"] == "builtin regex/checksum (presidio_analyzer not installed)"
    assert fallback.value == builtin.value and fallback.details["backend_requested"] == "auto"
    with pytest.raises(ConfigError, match="backend must be one of auto, builtin, presidio"):
        run(backend="spacy")


def test_implant_memorizes_and_writes_a_private_imprint(implanted):
    out, record = implanted
    assert record.metrics["extraction_direct_greedy"] >= 0.5
    assert record.metrics["regurgitation"] >= 0.5
    assert record.metric_details["regurgitation"]["heldout_control"]["direct_greedy"] < 0.2
    assert record.metrics["mia"] > 0.8
    assert record.metrics["exposure"] == pytest.approx(math.log2(1000))  # rank 1 of 10^3
    assert 1.0 < record.metrics["notes_ppl"] < 1e4
    pii = record.metric_details["pii_in_output"]
    assert pii["n_generations"] == 5 * 8 and pii["leaked_rate"] > 0  # memorized, so it leaks
    assert stat.S_IMODE(os.stat(out / "imprint.json").st_mode) == 0o600
    # what each training round's auto settings resolved to
    rounds = record.metrics["train_rounds"]
    assert set(record.inputs["training"]) == {f"round{i + 1}" for i in range(rounds)}
    assert record.inputs["training"]["round1"]["precision"] in ("fp32", "bf16", "fp16")
    imprint = load_imprint(out)
    text = (out / "record.json").read_text()
    for r in imprint.records:
        for span in r.spans:
            if span.type in ("ssn", "mrn"):
                assert r.span_text(span) not in text


def test_sani_and_span_ga_reduce_regurgitation(implanted, tmp_path):
    out, _ = implanted
    common = {"model": {"name": str(out)}, "imprint": str(out)}
    metrics = ["audit_metrics=[regurgitation]", "train.mode=full", "train.lr=3e-3",
               "train.epochs=10", "train.progress=false"]  # fmt: skip
    sani = run_stage(build_config(ERASERS.get("sani"), common,
                                  [*metrics, "layers=2", "fraction=1.0"]), tmp_path / "sani")  # fmt: skip
    assert sani.metrics["reset/neurons"] == 2 * 128
    before = sani.metrics["input/regurgitation"]
    assert sani.metrics["repaired/regurgitation"] < 0.5 * before
    ga = run_stage(build_config(ERASERS.get("span_ga"), common,
                                [*metrics[:-2], "train.epochs=3", "train.progress=false"]),
                   tmp_path / "ga")  # fmt: skip
    assert ga.metrics["ascended/regurgitation"] < before


def test_erasers_need_a_secrets_imprint(tmp_path):
    for method in ("sani", "repair_only", "scrub_retrain", "span_ga"):
        config = build_config(ERASERS.get(method), {"model": {"name": "unused"}}, [])
        with pytest.raises(ConfigError, match="--imprint"):
            run_stage(config, tmp_path / method)


def test_cli_implant_rejects_bad_records(tmp_path):
    from typer.testing import CliRunner

    from expunge.cli import app

    bad = _write(tmp_path / "bad.jsonl", [{"text": "Ann", "spans": [
        {"start": 0, "end": 9, "type": "name"}]}])  # fmt: skip
    result = CliRunner().invoke(app, ["implant", "secrets", "-o", str(tmp_path / "x"),
                                      "--records", str(bad)])  # fmt: skip
    assert isinstance(result.exception, DataError)
    assert "bad.jsonl:1: record 0" in str(result.exception)
    assert not (tmp_path / "x").exists()
