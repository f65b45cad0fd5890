"""Distillation modes: turn one task example into a :class:`~teacher.core.records.Record`.

Server-side logic on top of :class:`~teacher.serving.service.TeacherService`: the
``Distill`` RPC calls :func:`distill_example`, which hands the example to the mode
registered under the requested name. The shared pipeline and the registry are in
``base``; each mode is one module here (``trace``, ``rewrite``, ``best_of_n``), found
and imported on first use of the package, so adding a mode is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil

from teacher.core.records import Record
from teacher.core.tasks import Example
from teacher.distill.modes.base import (
    DEFAULT_PPL_THRESHOLD,
    FALLBACKS,
    MIN_REASONING_WORDS,
    DistillMode,
    DistillOptions,
    cli_names,
    example_record_base,
    get_mode,
    mode_names,
    normalize_mode,
    reasoning_words,
    register,
    wire_value,
)
from teacher.serving.errors import InvalidArgument
from teacher.serving.service import TeacherService

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DEFAULT_PPL_THRESHOLD",
    "FALLBACKS",
    "MIN_REASONING_WORDS",
    "DistillMode",
    "DistillOptions",
    "cli_names",
    "distill_example",
    "example_record_base",
    "get_mode",
    "mode_names",
    "normalize_mode",
    "reasoning_words",
    "register",
    "wire_value",
]


async def distill_example(
    service: TeacherService, example: Example, options: DistillOptions, request_id: str = ""
) -> Record:
    """One record for ``example``, made by the mode ``options.mode`` names."""
    try:
        mode = get_mode(options.mode)
    except ValueError as exc:
        raise InvalidArgument("mode", str(exc)) from exc
    return await mode.distill(service, example, options, request_id)
