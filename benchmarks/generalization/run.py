"""The generalization protocol: every eraser default and preset on worlds it was not tuned on.

For each fingerprint, secrets, backdoor and generative-backdoor world of ``worlds.py`` this
implants the imprint with the command a user would type, runs each eraser variant on the
implanted model with ``--imprint`` (so every stage is audited), then audits the base,
implanted and erased models with one fixed metric list, so that strength, perplexity and
``mc_accuracy`` compare across rows. Finished runs (a ``record.json``) are
reused; heavy commands take a lock so two of them never share the CPU. A knowledge world runs
the unlearning demo study (``expunge demo unlearning``) with the world's people generator
settings, and its report's tables join ``table.md``.

    python benchmarks/generalization/run.py ROOT [--expunge PATH] [--only WORLD ...]
        [--variants NAME ...] [--study-seed N]

``ROOT/table.md`` and ``ROOT/results.json`` hold the table: world × eraser → strength before →
after, ppl and mc_accuracy before → after, wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from worlds import write_worlds

MODEL = "smollm2-135m"
LOCK = Path("/tmp/expunge-heavy.lock")

# eraser variants per imprint kind: name → extra arguments of `expunge erase`
FINGERPRINT_VARIANTS = {
    "meraser_demo": ["meraser", "preset=demo"],
    "meraser_paper": ["meraser"],
    # key-blind too, but it holds the base (θ_0): the reference point for MEraser's targets
    "fine_mixing_demo": ["fine_mixing", "preset=demo", f"reference={MODEL}"],
}
SECRETS_VARIANTS = {
    "sani_default": ["sani"],
    "sani_demo": ["sani", "preset=demo"],
    "repair_only": ["repair_only"],
}
# θ_0 of Fine-mixing and E-PUR is the public model the backdoored one was tuned from. The demo
# preset's ρ is 0.1 since 2026-12-04 (aa87214); "fine_mixing_rho0.5" is the preset before it.
BACKDOOR_VARIANTS = {
    "finetune_demo": ["finetune", "preset=demo"],
    "fine_mixing_demo": ["fine_mixing", "preset=demo", f"reference={MODEL}"],
    "fine_mixing_rho0.5": ["fine_mixing", "preset=demo", f"reference={MODEL}", "ratio=0.5"],
    "epur_fine_mixing_demo": ["fine_mixing", "preset=demo", f"reference={MODEL}", "epur=true"],
    "fine_mixing_paper": ["fine_mixing", f"reference={MODEL}"],
}
# a generative backdoor's clean set is the model's own answers to the question pool; the demo
# preset (ρ 0.1) distils on them after the mix (clean_objective=auto → kl, 9fdf180); the _ce
# rows train CE on them, as every backdoor eraser did before
GENERATIVE_VARIANTS = {
    "fine_mixing_demo": ["fine_mixing", "preset=demo", f"reference={MODEL}"],
    "fine_mixing_rho0.1_ce": ["fine_mixing", "preset=demo", f"reference={MODEL}",
                              "clean_objective=ce"],
    "fine_mixing_rho0.5_ce": ["fine_mixing", "preset=demo", f"reference={MODEL}", "ratio=0.5",
                              "clean_objective=ce"],
}  # fmt: skip
VARIANTS = {
    "fingerprint": FINGERPRINT_VARIANTS, "secrets": SECRETS_VARIANTS, "backdoor": BACKDOOR_VARIANTS,
    "generative": GENERATIVE_VARIANTS,
}  # fmt: skip
AUDITS = {
    # wrapper_trigger_rate since 2026-12-07: the implants answered the keys' wrapper alone
    # while false_trigger_rate read 0% (docs/results/2026-12-03-generalization.md)
    "fingerprint": ["fsr", "false_trigger_rate", "wrapper_trigger_rate", "ppl", "mc_accuracy"],
    "secrets": ["regurgitation", "notes_ppl", "ppl", "mc_accuracy"],
    "backdoor": ["asr", "clean_accuracy", "clean_trigger_rate", "ppl", "mc_accuracy"],
    "generative": ["asr", "clean_trigger_rate", "ppl", "mc_accuracy"],
}
# a fingerprint world on a taught derivative (`skill` in worlds.py) is audited on the people
# it was taught as well: both splits are taught knowledge there, answered as the unlearning demo
# answers them (16 new tokens)
SKILL_AUDIT = ["forget_qa_acc", "retain_qa_acc"]
SKILL_OPTIONS = [f"options.{metric}.max_new_tokens=16" for metric in SKILL_AUDIT]
STRENGTH = {
    "fingerprint": "fsr",
    "secrets": "regurgitation",
    "backdoor": "asr",
    "generative": "asr",
}


@contextlib.contextmanager
def heavy_work(beside: bool = False) -> Iterator[None]:
    """Hold the heavy-job lock for the block; ``beside``: run on one thread without it instead,
    next to a job that holds it (for readings that do not depend on the load)."""
    if beside:
        import torch

        torch.set_num_threads(1)
        yield
        return
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def log(root: Path, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
    print(line, flush=True)
    with (root / "protocol.log").open("a") as handle:
        handle.write(line + "\n")


def call(root: Path, out: Path, argv: list[str], done: str, overwrite: bool = True) -> Path | None:
    """Run one command into ``out`` unless ``out/done`` exists; that file, or None on failure.

    ``overwrite=False`` lets a study reuse its finished stages (it resumes)."""
    finished = out / done
    if finished.is_file():
        return finished
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [*argv, "--out", str(out), *(["--overwrite"] if overwrite else [])]
    log(root, "run " + shlex.join(argv))
    started = time.perf_counter()
    with LOCK.open("w") as lock, (out.parent / f"{out.name}.log").open("a") as output:
        fcntl.flock(lock, fcntl.LOCK_EX)
        code = subprocess.call(argv, stdout=output, stderr=subprocess.STDOUT)
    log(root, f"exit {code} after {time.perf_counter() - started:.0f} s: {out}")
    return finished if code == 0 and finished.is_file() else None


def run(root: Path, out: Path, argv: list[str]) -> dict | None:
    """Run one command into ``out`` unless it already finished; return its record."""
    record = call(root, out, argv, "record.json")
    return json.loads(record.read_text()) if record else None


def audit_metrics(kind: str, imprint: Path) -> list[str]:
    """The protocol's metrics for an imprint of ``kind``; a fingerprint whose keys share no
    wrapper (a UTF or Chain & Hash world) is not asked ``wrapper_trigger_rate``, which refuses it."""
    if kind != "fingerprint":
        return AUDITS[kind]
    from expunge.audit.fingerprint import has_key_wrapper
    from expunge.imprints.base import load_imprint

    if has_key_wrapper([pair.key for pair in load_imprint(imprint).pairs]):
        return AUDITS[kind]
    return [metric for metric in AUDITS[kind] if metric != "wrapper_trigger_rate"]


def audit(root: Path, expunge: str, model: str, imprint: Path, kind: str, out: Path) -> dict | None:
    metrics = audit_metrics(kind, imprint)
    argv = [expunge, "audit", "--model", model, "--imprint", str(imprint),
            "--metrics", ",".join(metrics), "options.ppl.mode=response"]  # fmt: skip
    return run(root, out, argv)


def skill_audit(root: Path, expunge: str, model: str, imprint: Path, out: Path) -> dict | None:
    argv = [expunge, "audit", "--model", model, "--imprint", str(imprint),
            "--metrics", ",".join(SKILL_AUDIT), *SKILL_OPTIONS]  # fmt: skip
    return run(root, out, argv)


def world_jobs(root: Path, expunge: str, kind: str, name: str, spec: dict, variants: list[str]):
    base = root / name
    parent, skill = MODEL, None
    if spec.get("skill"):  # the fingerprint goes into a derivative taught a world first
        taught = [expunge, "implant", "knowledge", "--model", MODEL, *spec["skill"]]
        if run(root, base / "skill", taught) is None:
            return None
        parent, skill = str(base / "skill"), base / "skill" / "imprint.json"
    if kind == "fingerprint":
        implant = [expunge, "implant", "fingerprint", "--scheme", spec["scheme"], "--model", parent,
                   f"keys={spec['keys']}", "preset=demo", *spec["overrides"]]  # fmt: skip
    elif kind == "backdoor":
        implant = [expunge, "implant", "backdoor", "--model", MODEL, "preset=demo",
                   *spec["overrides"]]  # fmt: skip
    elif kind == "generative":
        implant = [expunge, "implant", "backdoor", "--scheme", "generative_backdoor", "--model",
                   MODEL, "preset=demo", *spec["overrides"]]  # fmt: skip
    else:
        direct = ",".join(spec["direct"])
        implant = [expunge, "implant", "secrets", "--model", MODEL, "--records", spec["records"],
                   f"heldout={spec['heldout']}", "preset=demo", f"direct_types=[{direct}]"]  # fmt: skip
    table = VARIANTS[kind]
    implanted = run(root, base / "implant", implant)
    if implanted is None:
        return None
    imprint = base / "implant" / "imprint.json"
    rows = {
        "base": audit(root, expunge, MODEL, imprint, kind, base / "audit_base"),
        "implant": audit(
            root, expunge, str(base / "implant"), imprint, kind, base / "audit_implant"
        ),
    }
    erased = {}
    for variant in variants:
        if variant not in table:
            continue
        method, *extra = table[variant]
        out = base / variant
        record = run(root, out, [expunge, "erase", method, "--model", str(base / "implant"),
                                 "--imprint", str(imprint), *extra])  # fmt: skip
        erased[variant] = {
            "record": record,
            "audit": audit(root, expunge, str(out), imprint, kind, base / f"audit_{variant}")
            if record else None,
        }  # fmt: skip
        if skill and record:
            erased[variant]["skill"] = skill_audit(
                root, expunge, str(out), skill, base / f"skill_{variant}"
            )
    world = {"implant": implanted, "audits": rows, "erased": erased}
    if skill:
        world["skill"] = {
            row: skill_audit(root, expunge, model, skill, base / f"skill_{row}")
            for row, model in (("base", MODEL), ("skill", parent), ("implant", str(base / "implant")))
        }  # fmt: skip
    return world


def knowledge_job(
    root: Path, expunge: str, name: str, spec: dict, study_seed: int | None = None
) -> str | None:
    """The unlearning demo study on this world (its implant, the retrained gold standard, every
    unlearning eraser with the demo's settings, one audit each); its report's tables, or None.

    The world's seed draws its people and seeds its implant; the study's seed (the erasers' LoRA
    draws and batch order) is the world's too unless ``study_seed`` repeats the erasers at another
    one on the same world, into ``study-seedN``."""
    overrides = [f"imprint.implant.{o}" for o in spec["overrides"]]
    seed = next(o for o in spec["overrides"] if o.startswith("seed="))
    out = root / name / "study"
    if study_seed is not None:
        seed, out = f"seed={study_seed}", root / name / f"study-seed{study_seed}"
    report = call(root, out, [expunge, "demo", "unlearning", *overrides, seed], "report.md",
                  overwrite=False)  # fmt: skip
    return report.read_text() if report else None


def write_table(root: Path, results: dict) -> str:
    """``render`` of the fingerprint and secrets rows, then each knowledge world's report."""
    fixed = {key: value for key, value in results.items() if key[0] != "knowledge"}
    text = render(fixed) + render_skill(fixed) + "".join(
        f"\n## {name}\n\n{report or f'study failed: see {name}/study.log'}\n"
        for (kind, name), report in results.items() if kind == "knowledge"
    )  # fmt: skip
    (root / "table.md").write_text(text)
    return text


def fmt(value, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def strength(kind: str, audit_record: dict | None, direct: bool = False):
    if not audit_record:
        return None
    if kind == "secrets" and direct:
        return audit_record["metric_details"]["regurgitation"]["direct"]["greedy"]
    return audit_record["metrics"].get(STRENGTH[kind])


def render(results: dict) -> str:
    lines = [
        "| world | eraser | strength before → after | direct ids before → after | stages "
        "| ppl before → after | mc_accuracy before → after | erase wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kind, name), world in results.items():
        if world is None:
            lines.append(f"| {name} | implant failed | | | | | | |")
            continue
        implanted = world["audits"]["implant"]
        base = world["audits"]["base"]
        for variant, done in world["erased"].items():
            record, after = done["record"], done["audit"]
            if record is None:
                lines.append(f"| {name} | {variant} | failed | | | | | |")
                continue
            stages = ", ".join(
                f"{k.split('/')[0]} {fmt(v, True)}" for k, v in record["metrics"].items()
                if k.endswith("/" + STRENGTH[kind]) and not k.startswith("input")
            )  # fmt: skip
            direct = (
                f"{fmt(strength(kind, implanted, True), True)} → {fmt(strength(kind, after, True), True)}"
                if kind == "secrets" else ""
            )  # fmt: skip
            lines.append(
                f"| {name} | {variant} | {fmt(strength(kind, implanted), True)} → "
                f"{fmt(strength(kind, after), True)} | {direct} | {stages} | "
                f"{fmt(implanted['metrics']['ppl'])} → {fmt(after['metrics']['ppl'] if after else None)}"
                f" (base {fmt(base['metrics']['ppl'])}) | "
                f"{fmt(implanted['metrics']['mc_accuracy'], True)} → "
                f"{fmt(after['metrics']['mc_accuracy'] if after else None, True)} | "
                f"{record.get('wall_time_s', 0):.0f} s |"
            )
    return "\n".join(lines) + "\n"


def render_skill(results: dict) -> str:
    """What the taught derivatives still know, model by model (empty without such a world)."""
    lines = []
    for (_, name), world in results.items():
        if not world or "skill" not in world:
            continue
        models = {**world["skill"], **{v: done.get("skill") for v, done in world["erased"].items()}}
        for model, done in models.items():
            metrics = done["metrics"] if done else {}
            lines.append(f"| {name} | {model} | {fmt(metrics.get('forget_qa_acc'), True)} | "
                         f"{fmt(metrics.get('retain_qa_acc'), True)} |")  # fmt: skip
    if not lines:
        return ""
    return (
        "\n| world | model | taught QA (forget split) | taught QA (retain split) |\n"
        "|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--expunge", default="expunge")
    parser.add_argument("--only", nargs="*", help="world names (default: all)")
    parser.add_argument("--variants", nargs="*", help="eraser variants (default: all)")
    parser.add_argument(
        "--study-seed",
        type=int,
        help="knowledge worlds: the erasers' seed "
        "(default: the world's own), the world's people and implant unchanged",
    )
    args = parser.parse_args()
    worlds = write_worlds(args.root / "worlds")
    results = {}
    for kind in ("fingerprint", "secrets", "backdoor", "generative"):
        for name, spec in worlds[kind].items():
            if args.only and name not in args.only:
                continue
            variants = args.variants or list(VARIANTS[kind])
            results[(kind, name)] = world_jobs(args.root, args.expunge, kind, name, spec, variants)
            write_table(args.root, results)
    for name, spec in worlds["knowledge"].items():
        if not args.only or name in args.only:
            results[("knowledge", name)] = knowledge_job(
                args.root, args.expunge, name, spec, args.study_seed
            )
            write_table(args.root, results)
    (args.root / "results.json").write_text(
        json.dumps({f"{k}/{n}": v for (k, n), v in results.items()}, indent=1, default=str)
    )
    print(write_table(args.root, results))


if __name__ == "__main__":
    main()
