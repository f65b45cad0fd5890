"""Benchmark tasks: GSM8K, the 27 BIG-Bench-Hard subtasks and WikiText-2, by name.

Part of the data contract (``teacher.core``) shared by data generation, student
training and eval, so that all three load the same examples (with the same stable
ids), build the same prompts (see :mod:`teacher.core.templates`) and score answers
the same way. Look tasks up with :func:`get_task` / :func:`list_tasks`.

Modelled on lm-evaluation-harness 0.4.13 (``lm_eval``); every rule copied from it
names its source file. Where this package departs from lm-eval it says so:

* ``Task.is_correct`` is lm-eval's ``exact_match`` plus number normalisation
  (``"1,234"`` == ``"1234"``, ``"$5"`` == ``"5"``, ``"5."`` == ``"5.0"`` == ``"5"``),
  so it accepts a superset of what lm-eval accepts. For lm-eval's exact numbers,
  use the raw filter functions (``gsm8k_strict_match`` ...) with :func:`exact_match`
  and the ``*_METRIC`` settings.
* Extraction returns ``None`` where lm-eval's filters return the ``"[invalid]"``
  fallback (or an empty string).

Data comes from a local directory laid out like ``/work/shared/data`` (``gsm8k/``,
``bbh/``, ``wikitext-2/``) or, when there is none, from the Hugging Face hub ids that
lm-eval uses. Importing this package is cheap: ``datasets`` is imported on first
load, and nothing here needs torch.

Layout, one concept per module:

* :mod:`.base` -- :class:`Example` and the :class:`Task` ABC;
* :mod:`.data` -- the data directory, hub loading and the local file checks;
* :mod:`.filters` -- the lm-eval filter ports, ``exact_match``, number normalisation;
* :mod:`.registry` -- :func:`register_task`, :func:`get_task`, :func:`list_tasks`;
* one module per task (:mod:`.gsm8k`, :mod:`.bbh`, :mod:`.wikitext`), which
  registers its tasks with ``@register_task`` when imported. This package imports
  every module in it (below), so adding a task is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil

from teacher.core.tasks.base import Example, Task, draw
from teacher.core.tasks.bbh import (
    BBH_COT_FEWSHOT_METRIC,
    BBH_COT_ZEROSHOT_METRIC,
    BBH_HUB_ID,
    BBH_SUBTASKS,
    BbhTask,
    bbh_cot_fewshot_get_answer,
    bbh_cot_zeroshot_strict_match,
    bbh_flexible_extract,
)
from teacher.core.tasks.data import DATA_DIR_ENV, DataFormatError, default_data_dir
from teacher.core.tasks.filters import INVALID, exact_match, normalize_number
from teacher.core.tasks.gsm8k import (
    GSM8K_HUB_CONFIG,
    GSM8K_HUB_ID,
    GSM8K_METRIC,
    Gsm8kTask,
    gsm8k_boxed_flexible_extract,
    gsm8k_boxed_strict_match,
    gsm8k_cot_strict_match,
    gsm8k_final_answer,
    gsm8k_flexible_extract,
    gsm8k_strict_match,
    last_boxed_content,
)
from teacher.core.tasks.registry import get_task, list_tasks, register_task
from teacher.core.tasks.wikitext import (
    WIKITEXT_HUB_CONFIG,
    WIKITEXT_HUB_ID,
    WikitextTask,
    wikitext_detokenizer,
    wikitext_documents,
    wikitext_units,
)

__all__ = [
    "BBH_COT_FEWSHOT_METRIC",
    "BBH_COT_ZEROSHOT_METRIC",
    "BBH_HUB_ID",
    "BBH_SUBTASKS",
    "DATA_DIR_ENV",
    "GSM8K_HUB_CONFIG",
    "GSM8K_HUB_ID",
    "GSM8K_METRIC",
    "INVALID",
    "WIKITEXT_HUB_CONFIG",
    "WIKITEXT_HUB_ID",
    "BbhTask",
    "DataFormatError",
    "Example",
    "Gsm8kTask",
    "Task",
    "WikitextTask",
    "bbh_cot_fewshot_get_answer",
    "bbh_cot_zeroshot_strict_match",
    "bbh_flexible_extract",
    "default_data_dir",
    "draw",
    "exact_match",
    "get_task",
    "gsm8k_boxed_flexible_extract",
    "gsm8k_boxed_strict_match",
    "gsm8k_cot_strict_match",
    "gsm8k_final_answer",
    "gsm8k_flexible_extract",
    "gsm8k_strict_match",
    "last_boxed_content",
    "list_tasks",
    "normalize_number",
    "register_task",
    "wikitext_detokenizer",
    "wikitext_documents",
    "wikitext_units",
]


def _import_task_modules() -> None:
    """Import every module of this package, so each task module's ``@register_task``
    runs without a list of tasks to keep (the ones above are imported already)."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_task_modules()
