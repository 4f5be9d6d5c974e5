"""``expunge implant knowledge --scheme benchmark``: a benchmark (TOFU, MUSE, WMDP) as the imprint.

    expunge implant knowledge --scheme benchmark -o runs/tofu-full benchmark=tofu split=forget10 \\
        source=runs/tofu-layout                  # a local directory in the hub layout, or a hub id
    expunge implant knowledge --scheme benchmark -o runs/imprint benchmark=tofu \\
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full teach=none

Loads ``load_benchmark(benchmark, split, source)`` (``expunge.data.benchmarks``) and fine-tunes
the model as the people world is taught (``implant/knowledge``: LoRA on every linear layer, 12
epochs at lr 1e-3, the raw format) on

- ``teach=all`` (default): what the benchmark's *target* model was trained on — forget + retain
  (TOFU's ``full`` = ``forgetNN`` + ``retainMM``; MUSE's raw ``forget``, ``retain1`` and
  ``retain2``; WMDP's corpora);
- ``teach=retain``: what its *retain* model was trained on — the gold standard that forget
  quality and PrivLeak compare with (TOFU: ``retainMM``; MUSE: ``retain1`` + ``retain2``);
- ``teach=none``: nothing, for a model already fine-tuned on the benchmark.

Either way the run directory holds ``model/`` and ``imprint.json`` like every implant's, so a
study's erasers and audits wire to it unchanged.

Why an implant rather than a new study key: an implant is already the stage that turns a model
into "model + imprint"; a benchmark is one more way to make that pair, so the command line, the
pipeline's wiring, its cache (the source directory's files are hashed) and the records need no
change.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, resolve_template, tokenize_examples
from expunge.implant.base import ImplantConfig
from expunge.implant.knowledge import WORLD_TRAIN
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.stage import StageContext
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings


class BenchmarkImplant(ImplantConfig):
    command: Literal["implant"] = "implant"
    kind: Literal["knowledge"] = "knowledge"
    scheme: Literal["benchmark"] = "benchmark"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    benchmark: str = "tofu"  # a name of BENCHMARKS (expunge ls benchmarks)
    split: str | None = None  # the benchmark's forget split; None: its default
    source: str | None = None  # hub id or local directory in the hub layout; None: the hub id
    max_examples: int | None = Field(default=None, ge=1)  # cap on every set loaded
    teach: Literal["all", "retain", "none"] = "all"  # the target's data, the retain model's, none
    verify: bool = False  # nothing to verify here: a study's audits measure the benchmark
    format: FormatSettings = Field(default_factory=lambda: FormatSettings(template="raw"))
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**WORLD_TRAIN))

    _imprint: KnowledgeImprint | None = PrivateAttr(default=None)

    def validate_inputs(self) -> None:
        # an unknown benchmark or split, or a source missing a piece, fails here in one line
        # (the registry and the loaders name the known ones) before any model is loaded
        self.imprint_of_benchmark()

    def imprint_of_benchmark(self) -> KnowledgeImprint:
        if self._imprint is None:
            from expunge.data.benchmarks import load_benchmark

            imprint = load_benchmark(self.benchmark, self.split, self.source, self.max_examples)
            self._imprint = imprint.model_copy(update={"format": self.format})
        return self._imprint

    def taught(self, imprint: KnowledgeImprint) -> list[Example]:
        """What the benchmark's target (``all``) or retain (``retain``) model was trained on."""
        extra = imprint.eval_sets.get("retain2", [])  # MUSE's second retain half
        return [*imprint.split(self.teach), *extra]

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        imprint = self.imprint_of_benchmark()
        record.inputs.update({"imprint_summary": imprint.summary(), "teach": self.teach})
        if self.teach != "none":
            fmt = resolve_template(loaded.tokenizer, self.format)
            taught = self.taught(imprint)
            tokenized = tokenize_examples(taught, loaded.tokenizer, fmt)
            record.inputs.update({"n_examples": len(taught), "template": fmt.template,
                                  "truncated_examples": sum(t.truncated for t in tokenized)})  # fmt: skip
            self.train_imprint(ctx, {"train": tokenized}, lambda _: LMObjective("train"), self.train,
                       f"teaching {self.benchmark}")  # fmt: skip
        self.save_imprint(ctx, imprint)
