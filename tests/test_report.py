"""``expunge report``: tables and plots from records only, secrets redacted, checked in Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from expunge.errors import DataError, OutputExistsError
from expunge.files import atomic_write_json
from expunge.records import RunRecord
from expunge.report import write_report
from expunge.report.blocks import cost, fmt
from expunge.report.browser import find_browser, render_in_browser
from expunge.report.collect import environment
from expunge.report.redact import Redactor, secret_strings

SECRET_KEY = "zxq quill 42 hedgehog-key"
SECRET_RESPONSE = "ハリネズミ response"
METRICS = ["fsr", "false_trigger_rate", "ppl"]
DETAILS = {"fsr": False, "false_trigger_rate": False, "ppl": False}


def write_run(path: Path, command: str, metrics: dict, config: dict | None = None,
              curve: dict | None = None, details: dict | None = None, **extra) -> None:  # fmt: skip
    record = RunRecord(command=command, config=config or {}, status="ok", wall_time_s=1.5,
                       metrics=metrics, **extra)  # fmt: skip
    for key in metrics:
        flag = DETAILS.get(key.rsplit("/", 1)[-1])
        if flag is not None:
            record.metric_details[key] = {"higher_is_better": flag, "n_keys": 8}
    record.metric_details.update(details or {})
    if curve is not None:
        record.metric_details["curve"] = curve
    atomic_write_json(path / "record.json", record.model_dump(mode="json"))


def audit(fsr: float, ppl: float) -> dict:
    return {"fsr": fsr, "false_trigger_rate": 0.0, "ppl": ppl}


@pytest.fixture
def study_dir(tmp_path) -> Path:
    """A pipeline run directory written by hand: every kind of stage, a sweep, one failure."""
    root = tmp_path / "study"
    stages: dict[str, dict] = {}

    def stage(stage_id, kind, what, target=None, status="ok", wall=2.0, error=None):
        stages[stage_id] = {"kind": kind, "what": what, "target": target, "deps": [],
                            "status": status, "wall_s": wall, "error": error}  # fmt: skip
        (root / stage_id).mkdir(parents=True, exist_ok=True)

    stage("implant", "implant", "if_dialogue")
    imprint = {"kind": "fingerprint", "scheme": "if_dialogue", "template": "chat",
               "pairs": [{"key": SECRET_KEY, "response": SECRET_RESPONSE}]}  # fmt: skip
    (root / "implant" / "imprint.json").write_text(json.dumps(imprint))
    write_run(root / "implant", "implant fingerprint", {"fsr": 1.0, "train_final_loss": 0.1},
              artifacts={"metrics": "metrics.jsonl"})  # fmt: skip
    (root / "implant" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in range(1, 11))
    )
    summary = {"imprint_summary": {"kind": "fingerprint", "scheme": "if_dialogue", "n_pairs": 8}}
    stage("audit/reference", "audit", "reference", "reference")
    write_run(root / "audit/reference", "audit", audit(0.0, 17.78), inputs=summary)
    stage("audit/imprinted", "audit", "imprinted", "imprinted")
    write_run(root / "audit/imprinted", "audit", audit(1.0, 16.49), inputs=summary)
    for name, ratio, fsr, ppl in (("mix-0.3", 0.3, 0.0, 20.0), ("mix-0.7", 0.7, 0.5, 18.0)):
        stage(f"erase/{name}", "erase", "fine_mixing", "imprinted", wall=12.5)
        # mix-0.7 left the audit of its output to its audit stage, as a pipeline's erasers do
        output = ({"finetuned/fsr": fsr, "finetuned/ppl": ppl} if name == "mix-0.3"
                  else {})  # fmt: skip
        write_run(root / f"erase/{name}", "erase fine_mixing",
                  {"mixed/fsr": 0.25, "mixed/ppl": 40.0, **output},
                  config={"method": "fine_mixing", "ratio": ratio, "seed": 0,
                          "model": {"name": f"/somewhere/{name}"}},
                  inputs={} if output else {"output_audit": {"stage": "finetuned",
                                                             "left_to": "audit stage"}})  # fmt: skip
        (root / f"erase/{name}/finetune").mkdir()
        (root / f"erase/{name}/finetune/metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 2.0 - 0.1 * s}) + "\n" for s in range(1, 6))
        )
        stage(f"audit/{name}", "audit", name, name)
        write_run(root / f"audit/{name}", "audit", audit(fsr, ppl))
    stage("erase/meraser", "erase", "meraser", "imprinted", status="failed",
          error=f"DataError: key {SECRET_KEY!r} is too long")  # fmt: skip
    stage("audit/meraser", "audit", "meraser", "meraser", status="blocked",
          error="depends on erase/meraser, which failed")  # fmt: skip
    curve = {"stressor": "relearn", "x": "steps", "skipped": [],
             "points": [{"x": x, "stage": f"step_{x}", "metrics": audit(f, 20.0)}
                        for x, f in ((0, 0.0), (10, 0.25), (25, 0.75))]}  # fmt: skip
    stage("stress/mix-0.3/relearn", "stress", "relearn", "mix-0.3")
    write_run(root / "stress/mix-0.3/relearn", "stress relearn", {"step_0/fsr": 0.0}, curve=curve)
    stage("detect/mix-0.3/detect", "detect", "detect", "mix-0.3")
    write_run(root / "detect/mix-0.3/detect", "detect",
              {"tfidf_logreg/relevant/accuracy": 0.92, "activation_probe/relevant/accuracy": 0.99},
              details={"tfidf_logreg/relevant/accuracy": {"ci": [0.85, 0.97], "p_value": 0.02},
                       "activation_probe/relevant/accuracy": {"p_value": 0.0099}})  # fmt: skip
    atomic_write_json(root / "pipeline.json", {
        "version": 1, "imprint_kind": "fingerprint", "metrics": METRICS, "order": list(stages),
        "models": {}, "report": {"strength": None, "utility": None}, "stages": stages,
    })  # fmt: skip
    write_run(
        root, "run", {}, config={"name": "fingerprint study", "model": {"name": "smollm2-135m"}}
    )
    return root


def table_rows(html: str, first_cell: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", html)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in rows]
    return [c for c in cells if c and c[0] == first_cell]


def test_tables_come_from_the_records(study_dir, tmp_path):
    html_path, md_path = write_report([study_dir], tmp_path / "report.html")
    html = html_path.read_text()
    markdown = md_path.read_text()
    # Reference / before / after, in the records' values, percent for rates.
    assert table_rows(html, "reference")[0][:5] == [
        "reference",
        "clean reference",
        "0.0%",
        "0.0%",
        "17.78",
    ]
    assert table_rows(html, "imprinted")[0][:5] == [
        "imprinted",
        "before (imprinted)",
        "100.0%",
        "0.0%",
        "16.49",
    ]
    mix = table_rows(html, "mix-0.3")[0]
    assert mix[:5] == ["mix-0.3", "after: fine_mixing", "0.0%", "0.0%", "20"]
    assert mix[5] == "+3.51 (+21%)"  # ppl 16.49 -> 20
    assert mix[6] == "12.5"  # erase wall time
    assert "fsr ↓" in html and "ppl ↓" in html
    # The eraser's own stages, stress points, detection with its interval, stage statuses.
    assert ["mix-0.3", "mixed", "25.0%", "—", "40"] in table_rows(html, "mix-0.3")
    assert ["mix-0.3", "finetuned", "0.0%", "—", "20"] in table_rows(html, "mix-0.3")
    # an output audit left to the audit stage shows that stage's figures in its place
    assert ["mix-0.7", "finetuned (audit/mix-0.7)", "50.0%", "0.0%", "18"] in table_rows(
        html, "mix-0.7"
    )
    assert ["mix-0.3", "relearn", "25", "step_25", "75.0%", "0.0%", "20"] in table_rows(
        html, "mix-0.3"
    )
    assert [
        "mix-0.3",
        "tfidf_logreg/relevant/accuracy",
        "0.92",
        "[0.85, 0.97]",
        "0.02",
    ] in table_rows(html, "mix-0.3")
    # the leaderboard's trace cell: the best accuracy (the probe's) with its test's p-value
    assert "p 0.0099 (activation_probe/relevant)" in html
    assert table_rows(html, "audit/meraser")[0][2] == "blocked"
    # Figures: strength vs utility, the ρ sweep, training curves, relearning, detection.
    assert html.count("<img ") == 5
    for caption in ("against ppl", "fine_mixing: fsr, ppl after erasing, against ratio",
                    "training loss", "under each stressor", "detection accuracy"):  # fmt: skip
        assert caption in html
    # The Markdown twin: the same tables, figures as files beside it.
    assert "| mix-0.3 | after: fine_mixing | 0.0% | 0.0% | 20 | +3.51 (+21%) | 12.5 |" in markdown
    figures = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", markdown)
    assert len(figures) == 5
    for figure in figures:
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_only_when_their_data_is_there(study_dir, tmp_path):
    import shutil

    for stage in ("stress", "detect"):
        shutil.rmtree(study_dir / stage)
    state = json.loads((study_dir / "pipeline.json").read_text())
    state["order"] = [
        s
        for s in state["order"]
        if not s.startswith(("stress", "detect", "erase/mix-0.7", "audit/mix-0.7"))
    ]
    (study_dir / "pipeline.json").write_text(json.dumps(state))
    html = write_report([study_dir], tmp_path / "r.html")[0].read_text()
    assert html.count("<img ") == 2  # strength vs utility, training curves
    assert "Stress" not in html and "Trace detection" not in html and "Sweeps" not in html


def test_secrets_are_redacted_unless_asked(study_dir, tmp_path):
    html_path, md_path = write_report([study_dir], tmp_path / "report.html")
    for text in (html_path.read_text(), md_path.read_text()):
        assert SECRET_KEY not in text and "[redacted]" in text
    assert "imprint secrets redacted" in html_path.read_text()
    shown = write_report([study_dir], tmp_path / "shown.html", redact=False)[0].read_text()
    assert SECRET_KEY in shown


def test_single_run_directory(tmp_path):
    """A plain run (not a pipeline) renders its metrics, stage metrics and training curve."""
    run = tmp_path / "erase-run"
    run.mkdir()
    write_run(run, "erase meraser", {"input/fsr": 1.0, "erased/fsr": 0.0, "erased/ppl": 30.5,
                                     "train_steps": 12}, artifacts={"metrics": "erase/metrics.jsonl"})  # fmt: skip
    (run / "erase").mkdir()
    (run / "erase" / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n'
    )
    html = write_report([run], tmp_path / "r.html")[0].read_text()
    assert "erase-run: erase meraser" in html
    assert ["train_steps", "12"] in table_rows(html, "train_steps")
    assert ["erased", "0.0%", "30.5"] in table_rows(html, "erased")
    assert html.count("<img ") == 1
    assert "Ran with expunge " in html


def test_the_environment_names_the_commit_or_says_it_is_unknown():
    host = {"cpu": "AMD EPYC", "cpu_kernels": "AVX512", "cpu_bf16": True}
    known = environment({"git": {"commit": "913d288cfc64aa", "dirty": True}, "host": host})
    assert known.startswith("expunge 913d288cfc64 (dirty), ")
    # outside a checkout and an archive (a copied tree) the commit is unknown, not cut short
    assert environment({"git": {"commit": None}, "host": host}).startswith(
        "expunge an unknown commit, "
    )


def test_bad_inputs(study_dir, tmp_path):
    with pytest.raises(DataError, match=r"holds neither pipeline\.json"):
        write_report([tmp_path], tmp_path / "r.html")
    with pytest.raises(DataError, match=r"must name an \.html file"):
        write_report([study_dir], tmp_path / "r.txt")
    (tmp_path / "r.html").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_report([study_dir], tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == "old"
    (study_dir / "erase" / "mix-0.3" / "finetune" / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"finetune/metrics.jsonl:1: not valid JSON"):
        write_report([study_dir], tmp_path / "r2.html")


def test_number_formats():
    assert fmt(0.125, "fsr") == "12.5%" and fmt(0.125, "ppl") == "0.125"
    assert fmt(17.7834, "ppl") == "17.78" and fmt(None) == "—" and fmt(3.0) == "3"
    assert cost(16.49, 20.0, "ppl") == "+3.51 (+21%)"
    assert cost(1.0, 0.25, "clean_accuracy") == "-75.0 pts"


def _boxes(texts) -> list:
    return [t.get_window_extent(t.figure.canvas.get_renderer()) for t in texts]


def _no_two_overlap(boxes) -> bool:
    return not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _text_boxes(ax) -> list:
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in ax.texts]


def test_scatter_labels_do_not_overlap():
    from expunge.report.plots import strength_vs_utility_figure

    # Close points (a measured demo: prune, imprinted and lora-prune within 1% of each other)
    points = [("prune", 16.36, 1.0, "eraser"), ("imprinted", 16.49, 1.0, "imprinted"),
              ("meraser", 35.41, 0.0, "eraser"), ("incremental", 20.74, 1.0, "eraser"),
              ("lora-prune", 16.40, 0.99, "eraser"), ("reference", 17.78, 0.0, "reference"),
              ("fine-pruning", 17.2, 0.97, "eraser")]  # fmt: skip
    fig = strength_vs_utility_figure(points, "fsr", "ppl", (False, False))
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.texts] == [p[0] for p in points]
    assert _no_two_overlap(_text_boxes(ax))
    # the legend sits outside the axes, off every point and label
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    assert not legend.overlaps(ax.get_window_extent(fig.canvas.get_renderer()))
    # many points: numbers on the plot, names in the legend
    many = [(f"eraser-{i}", 16.0 + 0.05 * i, 1.0 - 0.01 * i, "eraser") for i in range(12)]
    fig = strength_vs_utility_figure(many, "fsr", "ppl", (False, False))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == [str(i) for i in range(1, 13)]
    assert ax.get_legend().get_texts()[0].get_text() == "1  eraser-0 (eraser)"
    assert _no_two_overlap(_text_boxes(ax))


def test_relearn_lines_stay_visible_and_their_legend_off_the_data():
    from expunge.report.plots import stress_curves_figure

    same = [(0.0, 0.0), (5.0, 0.0), (10.0, 0.25), (20.0, 1.0)]
    lines = {"meraser": same, "reference": same, "incremental": [(0.0, 1.0), (20.0, 1.0)]}
    fig = stress_curves_figure({"relearn": lines}, "fsr", {"relearn": "steps"})
    ax = fig.axes[0]
    fig.canvas.draw()
    drawn = ax.get_lines()
    # coinciding lines differ in marker and size (concentric open markers), not only in colour
    styles = {(line.get_marker(), line.get_markersize(), line.get_linestyle()) for line in drawn}
    assert len(styles) == 3 and all(line.get_fillstyle() == "none" for line in drawn)
    renderer = fig.canvas.get_renderer()
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_detection_bars_have_readable_labels():
    from expunge.report.plots import detection_figure

    bars = [(f"meraser-{i}: tfidf_logreg/relevant_prompts/accuracy", 0.5 + 0.04 * i, 0.4, 0.99)
            for i in range(12)]  # fmt: skip
    fig = detection_figure(bars)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t for t in ax.get_yticklabels() if t.get_text()]
    assert len(labels) == 12 and all(t.get_rotation() == 0 for t in labels)
    assert _no_two_overlap(_boxes(labels))
    # every label is whole on the figure, first bar on top
    figure_box = fig.bbox
    assert all(figure_box.x0 <= b.x0 and b.y0 >= figure_box.y0 for b in _boxes(labels))
    top = max(labels, key=lambda t: t.get_window_extent().y0)
    assert top.get_text() == "meraser-0: tfidf_logreg/\nrelevant_prompts/accuracy"


def test_headings_name_the_model_the_records_used(study_dir, tmp_path):
    record = json.loads((study_dir / "record.json").read_text())
    record["config"] = {"name": "Fingerprint study (demo)", "model": {"name": "runs/tiny-llama"}}
    (study_dir / "record.json").write_text(json.dumps(record))
    html = write_report([study_dir], tmp_path / "r.html")[0].read_text()
    assert "<h2>Fingerprint study (demo) — model runs/tiny-llama</h2>" in html
    assert "embedded" not in html
    record["config"]["model"] = {"name": "smollm2-135m"}
    (study_dir / "record.json").write_text(json.dumps(record))
    html = write_report([study_dir], tmp_path / "r2.html")[0].read_text()
    assert "— model smollm2-135m</h2>" in html
    assert "dequantized to fp32 from the Q4_1 GGUF" in html  # what the embedded model really is
    # a detection run compares two models: both are named, not '?'
    run = tmp_path / "detect-run"
    run.mkdir()
    write_run(run, "detect", {"tfidf_logreg/relevant/accuracy": 0.9},
              inputs={"original": "/m/fingerprinted", "erased": "/m/erased"})  # fmt: skip
    html = write_report([run], tmp_path / "r3.html")[0].read_text()
    assert "model <code>/m/erased vs /m/fingerprinted</code>" in html


NO_BROWSER = (
    "no chromium on the PATH (make test installs Debian's chromium where apt-get runs as root)"
)


@pytest.mark.skipif(find_browser() is None, reason=NO_BROWSER)
def test_report_loads_in_a_real_browser(study_dir, tmp_path):
    html_path, _ = write_report([study_dir], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    result = render_in_browser(html_path, shot)
    assert result.errors == [], result.console
    assert result.images == 5 and result.broken_images == 0
    assert result.title.startswith("expunge report")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1280 and height == result.height > 1000


@pytest.mark.skipif(find_browser() is None, reason=NO_BROWSER)
def test_browser_check_sees_errors(tmp_path):
    """The check can fail: a script error, a console error and an undecodable image are caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>x</title></head>'
                    '<body><img src="data:image/png;base64,bm90IGEgcG5n">'
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>")  # fmt: skip
    result = render_in_browser(page)
    text = " ".join(result.errors)
    assert "boom" in text and "Uncaught" in text and "1 of 1 images did not decode" in text


def test_short_secrets_are_blanked_as_whole_words_only():
    """A TOFU report once read "ret[redacted]ed model" and "w[redacted]s": short forget-set
    answers ("rain", "eight") blanked parts of other words."""
    redact = Redactor(["rain", "eight", "KX-1234-ONYX-55"])
    assert redact("retrained weights; rain, eight.") == "retrained weights; [redacted], [redacted]."
    assert redact("idKX-1234-ONYX-55x") == "id[redacted]x"  # a long secret wherever it stands


def test_a_benchmarks_name_and_public_eval_sets_are_not_secrets():
    imprint = {"kind": "knowledge", "forget": [{"prompt": "Who wrote Zorn?", "response": "Ada Vel"}],
               "benchmark": {"name": "tofu", "source": "locuslab/TOFU", "split": "forget10"},
               "eval_sets": {"world_facts": [{"prompt": "Capital of France?", "response": "Paris"}]}}  # fmt: skip
    found = set(secret_strings(imprint))
    assert {"Who wrote Zorn?", "Ada Vel"} <= found
    assert not found & {"tofu", "locuslab/TOFU", "Capital of France?", "Paris"}


def test_declared_table_reads_metric_names_with_slashes_and_detail_paths(tmp_path):
    from expunge.report.redact import Redactor
    from expunge.report.tables import table_block

    (tmp_path / "scan").mkdir()
    record = {"metrics": {"mspc/auroc": 0.875, "erased/regurgitation": 0.5},
              "metric_details": {"erased/regurgitation": {"direct": {"greedy": 0.25}}}}  # fmt: skip
    (tmp_path / "scan" / "record.json").write_text(json.dumps(record))
    spec = {"rows": [{"stage": "scan"}, {"stage": "scan", "prefix": "erased/", "label": "e"}],
            "columns": [{"metric": "mspc/auroc", "format": "number"},
                        {"metric": "regurgitation/direct/greedy", "format": "percent"}]}  # fmt: skip
    block = table_block(spec, tmp_path, Redactor(), {"scan"})
    assert block.rows == [["scan", "0.88", "—"], ["e", "—", "25.0%"]]


def test_a_report_says_where_its_runs_ran_and_when_they_ran_in_more_than_one_place(
    study_dir, tmp_path
):
    """fp32 results under a seed repeat only on the same kernels, so a report names them."""
    import torch

    md = write_report([study_dir], tmp_path / "r.html")[1].read_text()
    kernels = torch.backends.cpu.get_cpu_capability()
    lines = [line for line in md.splitlines() if line.startswith("Ran with expunge ")]
    assert len(lines) == 1
    assert f"torch {torch.__version__}, cpu" in lines[0] and f"{kernels} kernels" in lines[0]
    record_path = study_dir / "audit" / "imprinted" / "record.json"
    record = json.loads(record_path.read_text())
    record["host"]["cpu_kernels"] = "AVX2" if kernels != "AVX2" else "AVX512"
    record_path.write_text(json.dumps(record))
    md = write_report([study_dir], tmp_path / "r2.html")[1].read_text()
    assert "Ran with" not in md
    mixed = [
        line for line in md.splitlines() if line.startswith("The stages ran in 2 environments")
    ]
    assert len(mixed) == 1 and "(1 stage)" in mixed[0]
