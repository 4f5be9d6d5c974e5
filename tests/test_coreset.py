"""Coreset selection: seeded random subsets, and step-budget matching in the unlearn eraser."""

from __future__ import annotations

import pytest
import torch

from expunge.config import build_config
from expunge.erase.unlearn.coreset import coreset_size, random_coreset
from expunge.errors import ConfigError, DataError
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.loading import LoadedModel
from expunge.models.tiny import tiny_model
from expunge.registry import ERASERS
from expunge.stage import run_stage


def test_random_coreset_is_a_seeded_ordered_subset() -> None:
    items = list(range(100))
    picked = random_coreset(items, 0.05, seed=3)
    assert len(picked) == 5 and picked == sorted(picked) and set(picked) <= set(items)
    assert random_coreset(items, 0.05, seed=3) == picked
    assert random_coreset(items, 0.05, seed=4) != picked
    assert coreset_size(10, 0.01) == 1  # never empty
    assert coreset_size(10, 1.0) == 10
    with pytest.raises(DataError, match="empty forget set"):
        random_coreset([], 0.5)


def test_bad_coreset_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"coreset\.ratio"):
        build_config(ERASERS.get("unlearn"), {}, ["coreset.ratio=0"])
    with pytest.raises(ConfigError, match=r"coreset\.method"):
        build_config(ERASERS.get("unlearn"), {}, ["coreset.method=gradn"])


@pytest.mark.parametrize("match_steps, steps", [(True, 5), (False, 1)])
def test_coreset_trains_the_full_sets_step_budget(tmp_path, match_steps: bool, steps: int) -> None:
    # 4 people forgotten x 5 Q/A = 20 forget examples; batch 4, 1 epoch -> 5 steps on the full set
    imprint = KnowledgeImprint.synthetic_people(n_people=10, forget_ratio=0.4, seed=0)
    path = imprint.save(tmp_path / "world")
    cfg = build_config(
        ERASERS.get("unlearn"), {"preset": "demo"},
        [f"imprint={path}", "objective=ga", "coreset.method=random", "coreset.ratio=0.2",
         f"coreset.match_steps={str(match_steps).lower()}", "train.epochs=1", "train.batch_size=4",
         "train.progress=false", "audit_metrics=[ppl]"],
    )  # fmt: skip
    model, tok = tiny_model("llama", seed=0)
    loaded = LoadedModel(model, tok, "tiny", "tiny", torch.device("cpu"), torch.float32)
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded})
    assert record.inputs["n_forget"] == 4
    assert record.inputs["coreset"]["n_full"] == 20
    assert record.inputs["coreset"]["n_selected"] == 4
    assert record.metrics["train_steps"] == steps
