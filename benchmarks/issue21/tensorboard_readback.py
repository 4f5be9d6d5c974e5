"""A TensorBoard event file read back beside the run's metrics.jsonl.

expunge finetune ... --out RUN train.report_to=tensorboard
python benchmarks/issue21/tensorboard_readback.py RUN
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run: Path) -> None:
    (events,) = (run / "tracking").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    curve = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    tags = sorted(accumulator.Tags()["scalars"])
    print(f"{events.relative_to(run.parent)} ({events.stat().st_size} bytes); scalars: {tags}\n")
    print("| step | loss (TensorBoard) | loss (metrics.jsonl) | lr | grad_norm |")
    print("|---|---|---|---|---|")
    by_step = {tag: {s.step: s.value for s in accumulator.Scalars(tag)} for tag in tags}
    for row in curve:
        step = row["step"]
        print(f"| {step} | {by_step['loss'][step]:.6f} | {row['loss']:.6f} | "
              f"{by_step['lr'][step]:.2e} | {by_step['grad_norm'][step]:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
