"""Studies from one YAML (``expunge run``): the spec, its plan, the cached execution, ``bench``.

``spec.py`` says what a study YAML may hold and reads it; ``plan.py`` turns it into stages with
validated configs, dependencies and hashes; ``state.py`` keeps ``pipeline.json``;
``execute.py`` runs what is not done yet through the one stage contract (``expunge.stage``);
``bench.py`` runs one study per imprint type against the erasers registered for its kind.
"""

from expunge.pipeline.execute import PipelineError, run_pipeline
from expunge.pipeline.graph import Plan, Stage
from expunge.pipeline.plan import plan_pipeline
from expunge.pipeline.spec import Locator, PipelineConfig, load_pipeline, parse_pipeline
from expunge.pipeline.state import STATE_FILE

__all__ = [
    "STATE_FILE", "Locator", "PipelineConfig", "PipelineError", "Plan", "Stage",
    "load_pipeline", "parse_pipeline", "plan_pipeline", "run_pipeline",
]  # fmt: skip
