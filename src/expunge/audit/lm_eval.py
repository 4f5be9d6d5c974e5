"""``lm_eval`` — utility on lm-evaluation-harness tasks (optional extra ``expunge[lmeval]``).

The harness (EleutherAI, ``lm_eval``) scores the model already loaded for the audit: no second
copy and no download of weights. Its tasks name hub datasets (``hellaswag``, ``arc_easy``,
``mmlu``…), which need the network; a task may also be a YAML file of the user's own, with a
local ``dataset_path: json`` — the way to run it offline, and the way the tests run it.

Options (``options.lm_eval.KEY=VALUE`` on the command line, ``options: {lm_eval: ...}`` in YAML):

- ``tasks``: task names or paths to task YAML files; by default a benchmark imprint's own
  (``imprint.benchmark.lm_eval_tasks``: WMDP's ``wmdp_bio``/``wmdp_cyber`` with ``mmlu`` kept),
  required otherwise;
- ``num_fewshot`` (default: each task's own), ``limit`` (examples per task, default all);
- ``include_path``: extra folders of task YAMLs.

The metric's value is the mean over tasks of each task's primary number — ``acc`` when the task
reports it, otherwise its first metric — and every number the harness reported is kept in the
details, per task (``details.tasks.wmdp_bio.value``, ``details.tasks.mmlu.value``: a WMDP
table's columns, accuracy falling to chance, 0.25, on the hazardous tasks while MMLU stays). Seeds: the audit's seed for the harness's Python, NumPy, torch and few-shot sampling.
A task YAML may name Python functions (``!function``) that the harness imports: load only task
files you trust, as with any code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from expunge.audit.base import AuditContext, MetricResult
from expunge.errors import ConfigError

INSTALL_HINT = "pip install 'expunge[lmeval]'"


def _harness() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise ConfigError(
            f"metric lm_eval needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
        ) from err
    return lm_eval


def resolve_tasks(entries: list[str], include_path: list[str]) -> tuple[list[str], list[str]]:
    """Task names for the harness, with the folder of each task YAML added to ``include_path``."""
    names, folders = [], [str(Path(p).expanduser()) for p in include_path]
    for entry in entries:
        path = Path(entry).expanduser()
        if path.suffix in {".yaml", ".yml"}:
            if not path.is_file():
                raise ConfigError(f"lm_eval task file {entry} does not exist")
            with path.open() as handle:
                spec = yaml.load(handle, Loader=_PermissiveLoader)
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
                raise ConfigError(f"lm_eval task file {entry} has no 'task: NAME' entry")
            names.append(spec["task"])
            folders.append(str(path.parent.resolve()))
        else:
            names.append(entry)
    return names, list(dict.fromkeys(folders))


class _PermissiveLoader(yaml.SafeLoader):
    """Reads a task YAML for its name only; ``!function`` tags stay unresolved strings."""


_PermissiveLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def primary_number(task_result: dict[str, Any]) -> tuple[str, float]:
    """The task's headline metric: ``acc`` if reported, else the first numeric non-stderr one."""
    numbers = {
        key.split(",")[0]: float(value)
        for key, value in task_result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
        and "_stderr" not in key and key != "alias"
    }  # fmt: skip
    if not numbers:
        raise ConfigError(f"lm_eval returned no metric for a task: {sorted(task_result)}")
    name = "acc" if "acc" in numbers else next(iter(numbers))
    return name, numbers[name]


def lm_eval_metric(ctx: AuditContext) -> MetricResult:
    tasks = ctx.options.get("tasks")
    if isinstance(tasks, str):
        tasks = [tasks]
    benchmark = getattr(ctx.imprint, "benchmark", None)
    if not tasks and benchmark is not None and benchmark.lm_eval_tasks:
        tasks = list(benchmark.lm_eval_tasks)  # WMDP: its multiple-choice tasks and MMLU
    if not tasks:
        raise ConfigError(
            "metric lm_eval needs tasks: options.lm_eval.tasks=[arc_easy,...] (names or task YAMLs)"
        )
    include = ctx.options.get("include_path") or []
    names, folders = resolve_tasks(list(tasks), [include] if isinstance(include, str) else include)
    lm_eval = _harness()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    harness_model = HFLM(pretrained=ctx.model, tokenizer=ctx.tokenizer, batch_size=ctx.batch_size)
    # indexing the harness's own few thousand task files takes seconds: skip it when every
    # task is a file of the user's
    only_files = all(Path(t).suffix in {".yaml", ".yml"} for t in tasks)
    manager = TaskManager(include_path=folders or None, include_defaults=not only_files)
    output = lm_eval.simple_evaluate(
        model=harness_model,
        tasks=names,
        num_fewshot=ctx.options.get("num_fewshot"),
        limit=ctx.options.get("limit"),
        task_manager=manager,
        random_seed=ctx.seed,
        numpy_random_seed=ctx.seed,
        torch_random_seed=ctx.seed,
        fewshot_random_seed=ctx.seed,
        log_samples=False,
    )
    results = output["results"]
    per_task, values = {}, []
    for name in names:
        if name not in results:
            raise ConfigError(f"lm_eval returned no result for task {name!r}: {sorted(results)}")
        metric, value = primary_number(results[name])
        values.append(value)
        per_task[name] = {
            "metric": metric, "value": value,
            "all": {k: v for k, v in results[name].items() if k != "alias" and _finite(v)},
        }  # fmt: skip
    return MetricResult(
        name="lm_eval",
        value=sum(values) / len(values),
        higher_is_better=True,
        details={
            "tasks": per_task,
            "num_fewshot": ctx.options.get("num_fewshot"),
            "limit": ctx.options.get("limit"),
            "n_samples": {k: v for k, v in (output.get("n-samples") or {}).items()},
            "harness_version": getattr(lm_eval, "__version__", None),
            "value": "mean over tasks of each task's primary metric",
        },
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
