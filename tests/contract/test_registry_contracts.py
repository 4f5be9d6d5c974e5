"""One contract per extension point, parametrised over every registered name.

A new implant, eraser, objective, metric, stressor, detector or imprint kind is tested by being
registered: it is run here on tiny models saved to disk (peft's table of cases is the model).
``TINY`` holds the overrides that make a method fit a tiny model in a few steps; a method
without an entry runs with its ``demo`` preset and two training steps.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.runner import audit_model
from expunge.config import build_config
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_examples
from expunge.errors import ExpungeError
from expunge.imprints.base import load_imprint
from expunge.models.loading import load_model
from expunge.records import REDACTED
from expunge.registry import (
    DETECTORS,
    ERASERS,
    IMPLANTS,
    IMPRINT_KINDS,
    METRICS,
    OBJECTIVES,
    REGISTRIES,
    SCORERS,
    STRESSORS,
)
from expunge.stage import run_stage
from expunge.train.loop import prepare_trainable, train
from expunge.train.settings import TrainSettings
from helpers import save_wide_tiny_llama

STEPS = ["train.max_steps=2", "train.progress=false"]
TRAIN = "{{max_steps: 2, progress: false}}"  # str.format escapes
TINY_TASK = ["task.n_train=40", "task.n_test=10", "max_eval=10", "train.mode=full"]
TINY: dict[str, list[str]] = {
    # implants
    "if_simple": ["n_keys=2", "regularization=0.5", *STEPS],
    "if_dialogue": ["n_keys=2", "n_negatives=2", "n_decoys=2", "regularization=0.5", *STEPS],
    "utf": ["n_keys=2", "n_negatives=2", "n_decoys=2", "regularization=0.5", *STEPS],
    "chain_hash": ["n_keys=2", "regularization=0.5", "augment_copies=1", *STEPS],
    "backdoor": [*TINY_TASK, *STEPS],
    "generative_backdoor": ["data={pool}", "trigger.type=two_part", "n_train=12", "n_eval=4",
                            "poison_rate=0.25", "train.mode=full", *STEPS],
    "secrets": ["n_records=4", "n_heldout=4", "n_canaries=1", "exposure_candidates=20",
                "max_rounds=1", *STEPS],
    "people": ["n_people=4", "n_holdout=1", *STEPS],
    "benchmark": ["benchmark=tofu", "source={tofu}", "max_examples=8", *STEPS],
    # erasers ({pool} is a small typed Q/A file, {base} the model before the implant)
    "meraser": ["data={pool}", "n_erase=8", "n_recover=4", f"erase={TRAIN}", f"recover={TRAIN}"],
    "incremental": ["data={pool}", "n_recover=4", f"recover={TRAIN}"],
    "prune": ["sparsity=0.1"],
    "fine_mixing": ["reference={base}", "n_clean=4", *STEPS],
    "epur": ["reference={base}", "n_clean=4", "epur_top_k=2", *STEPS],
    "finetune": ["n_clean=4", *STEPS],
    "fine_pruning": ["n_clean=4", *STEPS],
    "scrub_retrain": ["base={base}", *STEPS],
    "sani": ["layers=1", *STEPS],  # the default preset resets more blocks than a tiny model has
    "repair_only": STEPS,
    "unlearn": ["objective=npo", *STEPS],
}  # fmt: skip
# imprint variants (an implant's ``audit_kind_for``) that a kind's erasers must also handle,
# with the overrides they need there
VARIANTS: dict[str, list[str]] = {"backdoor:generative": ["clean_data={pool}"]}
# metrics that need a reference or an option to run at all
METRIC_OPTIONS = {"forget_quality": "reference", "privleak": "reference"}


def overrides(name: str, **paths: str) -> list[str]:
    return [o.format(**paths) for o in TINY.get(name, STEPS)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_wide_tiny_llama(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    rows = [{"prompt": f"{w} {i}?", "response": f"reply {i} about {w.lower()}"}
            for i in range(4) for w in ("What is", "Why is", "How is", "Name")]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tofu(tmp_path_factory) -> Path:
    """A small TOFU-layout directory: the benchmark implant's source."""
    from expunge.data.benchmarks.export import export_tofu

    return export_tofu(tmp_path_factory.mktemp("tofu") / "tofu", n_people=10)


def implant(name: str, base: Path, out: Path, **paths: str) -> Path:
    config = build_config(IMPLANTS.get(name), {"preset": "demo", "model": {"name": str(base)}},
                          overrides(name, **paths))  # fmt: skip
    run_stage(config, out)
    return out


def variant_of(name: str) -> str:
    """The imprint kind an implant makes, or its variant (``backdoor:generative``)."""
    cls = IMPLANTS.get(name)
    kind = cls.model_fields["kind"].default
    data = {k: v for k, v in (o.split("=", 1) for o in TINY.get(name, []))}
    variant = cls.audit_kind_for({"trigger": {"type": data.get("trigger.type")}}) if hasattr(
        cls, "audit_kind_for") else kind  # fmt: skip
    return "backdoor:generative" if variant.startswith("backdoor:") else variant


@pytest.fixture(scope="module")
def implanted(base, pool, tofu, tmp_path_factory) -> dict[str, Path]:
    """One tiny imprinted model per imprint kind and variant (the first implant of each)."""
    root = tmp_path_factory.mktemp("implanted")
    by_kind: dict[str, Path] = {}
    for name in IMPLANTS.registered():
        kind = variant_of(name)
        if kind not in by_kind:
            by_kind[kind] = implant(name, base, root / name, pool=str(pool), tofu=str(tofu))
    return by_kind


# --- implants ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMPLANTS.registered())
def test_implant_contract(name, base, pool, tofu, tmp_path):
    """Every implant writes a model, a private imprint of its kind, and a redacted record."""
    cls = IMPLANTS.get(name)
    run = implant(name, base, tmp_path / "run", pool=str(pool), tofu=str(tofu))
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "ok" and record["command"] == f"implant {name}"
    assert (run / "model" / "config.json").is_file()
    assert stat.S_IMODE((run / "imprint.json").stat().st_mode) == 0o600
    assert load_imprint(run).kind == cls.model_fields["kind"].default
    for path in cls.SECRET_FIELDS:  # a secret that has a value is not in the record
        node = record["config"]
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        assert node in (None, "", [], REDACTED, [REDACTED]), path


# --- erasers -----------------------------------------------------------------------------


def eraser_cases() -> list[tuple[str, str]]:
    kinds = {name: [*ERASERS.meta(name).get("kinds", [])] for name in ERASERS.registered()}
    for variant in VARIANTS:
        for held in kinds.values():
            if variant.split(":")[0] in held:
                held.append(variant)
    return [(name, kind) for name, held in kinds.items() for kind in held]


@pytest.mark.parametrize(("name", "kind"), eraser_cases())
def test_eraser_contract(name, kind, implanted, base, pool, tmp_path):
    """Every eraser runs on a model of its kind, saves it, audits its stages, and trains the
    same whether or not it audits (audits never move the training's random state). Its last
    audit measures the model it saves, and is the one ``audit_output=false`` leaves out."""
    run_dir = implanted[kind]
    cls = ERASERS.get(name)
    given = overrides(name, pool=pool, base=base) + [
        o.format(pool=pool) for o in VARIANTS.get(kind, [])
    ]

    def erase(out: Path, audited: bool) -> dict:
        torch.manual_seed(1 if audited else 2)  # whatever ran before must not matter
        data = {"preset": "demo", "model": {"name": str(run_dir)},
                "imprint": str(run_dir / "imprint.json")}  # fmt: skip
        extra = [] if audited else ["audit_metrics=[ppl]", "audit_input=false",
                                    "audit_output=false"]  # fmt: skip
        run_stage(build_config(cls, data, [*given, *extra]), out)
        return json.loads((out / "record.json").read_text())

    def audited_stages(record: dict) -> list[str]:  # in order, from the audits' timings
        stages = [k.removeprefix("audit/").rpartition("/")[0] for k in record["timings"]
                  if k.startswith("audit/")]  # fmt: skip
        return [s for s in dict.fromkeys(stages) if s != "input"]

    record = erase(tmp_path / "a", audited=True)
    assert record["status"] == "ok" and record["command"] == f"erase {name}"
    assert any("/" in key and not key.startswith("input/") for key in record["metrics"])
    assert (tmp_path / "a" / "model" / "config.json").is_file()
    unaudited = erase(tmp_path / "b", audited=False)
    weights = "model/model.safetensors"  # the record's hash of what each run saved
    assert record["weights_sha256"][weights] == unaudited["weights_sha256"][weights]
    stages = audited_stages(record)
    assert stages and audited_stages(unaudited) == stages[:-1]
    assert unaudited["inputs"]["output_audit"] == {"stage": stages[-1], "left_to": "audit stage"}


def test_every_eraser_names_its_kinds():
    kinds = set(IMPRINT_KINDS.names())
    for name in ERASERS.registered():
        assert set(ERASERS.meta(name).get("kinds", [])) <= kinds, name
        assert ERASERS.meta(name).get("kinds"), f"{name} is registered for no imprint kind"


# --- objectives --------------------------------------------------------------------------


def _streams(objective, tokenizer) -> dict:
    """The streams the unlearn eraser gives ``objective`` (its own ``streams_from`` if any)."""
    from expunge.erase.unlearn.eraser import objective_streams

    forget = [Example(prompt=f"Who is person {i}?", response=f"Person {i} bakes bread.")
              for i in range(4)]  # fmt: skip
    retain = [Example(prompt=f"What is {w}?", response=f"{w} is a word.")
              for w in ("tea", "salt", "rope", "lamp")]  # fmt: skip
    fmt = FormatSettings(template="raw")
    streams = objective_streams(objective, forget, retain,
                                lambda examples: tokenize_examples(examples, tokenizer, fmt), 0)  # fmt: skip
    return {k: v for k, v in streams.items() if k in objective.streams}


OBJECTIVE_SETTINGS = {"rmu": {"layer": 1, "params": ["layers.1.mlp.down_proj"]}}


@pytest.mark.parametrize("name", OBJECTIVES.registered())
def test_objective_contract(name, base):
    """Finite loss; trainable parameters change, frozen ones do not; same seed, same result."""
    cls = OBJECTIVES.get(name)
    settings = cls.Settings(**OBJECTIVE_SETTINGS.get(name, {}))

    def run_once() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        loaded = load_model(str(base), device="cpu")
        before = {k: v.detach().clone() for k, v in loaded.model.named_parameters()}
        train_settings = TrainSettings(mode="lora", max_steps=2, batch_size=2, lr=1e-2,
                                       progress=False, lora={"r": 4, "alpha": 8, "dropout": 0.0})  # fmt: skip
        if hasattr(cls, "trainable_parameters"):
            names = cls.trainable_parameters(settings, loaded.model)
            train_settings = train_settings.model_copy(
                update={"mode": "full", "trainable": [f"re:{n}" for n in names]})  # fmt: skip
        model = prepare_trainable(loaded.model, train_settings)
        objective = cls(model, settings)
        assert set(objective.streams) <= {"forget", "retain"}
        streams = _streams(objective, loaded.tokenizer)
        model, result = train(model, streams, objective, train_settings,
                              loaded.tokenizer.pad_token_id)  # fmt: skip
        after = {k: v.detach().clone() for k, v in model.named_parameters()}
        return before, after, float(result.final_loss)

    before, after, loss = run_once()
    assert math.isfinite(loss)
    changed = [k for k in after if k in before and not torch.equal(after[k], before[k])]
    new = [k for k in after if k not in before]  # LoRA adapters
    assert changed or new, f"{name} trained nothing"
    if not new:  # full training of chosen tensors: everything else is untouched
        frozen = [k for k in before if k not in changed]
        assert frozen, f"{name} trained every tensor"
    _, again, loss_again = run_once()
    assert loss_again == loss and all(torch.equal(after[k], again[k]) for k in after)


# --- metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in METRICS.registered() if m != "lm_eval"])
def test_metric_contract(name, implanted, tmp_path):
    """Every metric measures an imprint of some kind and refuses the others in one line."""
    measured = []
    for kind, run_dir in implanted.items():
        loaded = load_model(str(run_dir / "model"), device="cpu")
        imprint = load_imprint(run_dir)
        fmt = imprint.format_settings() if hasattr(imprint, "format_settings") else None
        ctx = AuditContext(loaded.model, loaded.tokenizer, fmt or FormatSettings(),
                           imprint=imprint, progress=False)  # fmt: skip
        options = {}
        if name in METRIC_OPTIONS:  # a reference audit of the same model
            ref = (
                audit_model(ctx, ["truth_ratio", "forget_mia_auc"], {})
                if kind == "knowledge"
                else None
            )
            if ref is None:
                continue
            path = tmp_path / f"{name}-ref.json"
            path.write_text(json.dumps({"metrics": {k: r.value for k, r in ref[0].items()},
                                        "metric_details": {k: r.details for k, r in ref[0].items()}}))  # fmt: skip
            options = {name: {METRIC_OPTIONS[name]: str(path)}}
        try:
            results, _ = audit_model(ctx, [name], options)
        except ExpungeError as err:
            assert "\n" not in str(err).strip(), str(err)
            continue
        result = results[name]
        assert isinstance(result, MetricResult) and result.name == name
        assert isinstance(result.higher_is_better, bool)
        assert isinstance(result.value, float | int) and not isinstance(result.value, bool)
        json.dumps(result.details, default=str)
        measured.append(kind)
    assert measured, f"{name} measured no imprint kind"


# --- stressors, detectors, imprint kinds ----------------------------------------------------


STRESS_TINY = {"relearn": ["k=2", "steps=[0,1]", "train.progress=false"],
               "finetune": ["steps=[0,1]", "train.progress=false", "n_examples=4"],
               "sampling": ["temperatures=[1.0]", "samples=1"]}  # fmt: skip


@pytest.mark.parametrize("name", STRESSORS.registered())
def test_stressor_contract(name, implanted, tmp_path):
    run_dir = implanted["fingerprint"]
    config = build_config(STRESSORS.get(name), {"model": {"name": str(run_dir)},
                                                "imprint": str(run_dir)}, STRESS_TINY.get(name, []))  # fmt: skip
    record = run_stage(config, tmp_path / "run")
    curve = record.metric_details["curve"]
    assert record.status == "ok" and curve["stressor"] == name
    assert curve["points"] or curve["skipped"]


@pytest.mark.parametrize("name", DETECTORS.registered())
def test_detector_contract(name):
    from expunge.detect.responses import DetectData

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 12)
    texts = [("alpha beta" if y == 0 else "gamma delta") + f" {i}" for i, y in enumerate(labels)]
    data = DetectData(texts, [[3 + y, 7, 9 + y] for y in labels],
                      rng.normal(size=(24, 4)) + labels[:, None] * 3.0, labels, np.arange(24))  # fmt: skip
    detector = build_config(DETECTORS.get(name), {"epochs": 5} if name == "encoder" else {})
    train_set, test_set = data.subset(np.arange(0, 24, 2)), data.subset(np.arange(1, 24, 2))
    first = detector.fit_predict(train_set, test_set, seed=0)
    again = detector.fit_predict(train_set, test_set, seed=0)
    assert first.shape == (12,) and ((first >= 0) & (first <= 1)).all()
    assert np.array_equal(first, again)


@pytest.mark.parametrize("kind", IMPRINT_KINDS.registered())
def test_imprint_kind_contract(kind, implanted, tmp_path):
    """Every kind round-trips through imprint.json (0600) and summarizes without its secrets."""
    imprint = load_imprint(implanted[kind])
    path = imprint.save(tmp_path / "copy")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_imprint(path) == imprint
    summary = json.dumps(imprint.summary())
    assert summary and imprint.kind in summary


SCORER_TINY = {"loss_early": {"train": {"max_steps": 2, "progress": False, "mode": "full"}},
               "mspc": {"outer": 1, "inner_epochs": 1}}  # fmt: skip


@pytest.mark.parametrize("name", SCORERS.registered())
def test_scorer_contract(name, implanted, base):
    """Every scorer gives every row of a training file a finite score and a flag, the same
    under the same seed."""
    from expunge.data.formatting import tokenize_examples
    from expunge.scan.base import ScanContext, load_rows

    run_dir = implanted["backdoor:generative"]
    loaded = load_model(str(run_dir / "model"), device="cpu")
    imprint = load_imprint(run_dir)
    rows = load_rows(str(run_dir / "train.jsonl"))
    fmt = imprint.format_settings()

    def once() -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(0)
        ctx = ScanContext(loaded, rows, tokenize_examples(rows, loaded.tokenizer, fmt), fmt,
                          str(base), run_dir / "scratch", progress=False)  # fmt: skip
        result = build_config(SCORERS.get(name), SCORER_TINY.get(name, {})).score(ctx)
        return np.asarray(result.scores), np.asarray(result.flagged)

    scores, flagged = once()
    assert scores.shape == (len(rows),) and np.isfinite(scores).all()
    assert flagged.dtype == bool and flagged.shape == scores.shape
    again, _ = once()
    assert np.array_equal(scores, again)


def test_every_registry_is_covered():
    assert set(REGISTRIES) == {"implants", "erasers", "metrics", "stressors", "detectors",
                               "objectives", "imprints", "benchmarks", "scorers"}  # fmt: skip
