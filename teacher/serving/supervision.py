"""Supervision of an engine's background tasks: none may die silently.

A task that ends by itself (an exception, or a return while the engine still
serves) is logged with its traceback, then restarted — unless it raised
``Fatal`` or restarted too often lately, in which case the engine has failed:
every ``on_failure`` callback is told once (the service turns the model
NOT_SERVING, and ``distill-teacher serve`` exits non-zero so an orchestrator
replaces the process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

FailureCallback = Callable[[BaseException], None]


class Fatal(Exception):
    """Raised by a background task when restarting it cannot help (the model or device
    failed): the engine stops serving."""


class Supervisor:
    """Runs named background tasks for one engine and restarts those that die."""

    def __init__(self, owner: str, max_restarts: int = 3, window_s: float = 60.0):
        self.owner = owner
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.failure: BaseException | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self._factories: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        self._restarts: dict[str, list[float]] = {}
        self._callbacks: list[FailureCallback] = []
        self._stopping = False

    def on_failure(self, callback: FailureCallback) -> None:
        self._callbacks.append(callback)
        if self.failure is not None:
            callback(self.failure)

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``factory()`` as task ``name`` (a new coroutine on each restart)."""
        self._factories[name] = factory
        task = asyncio.get_running_loop().create_task(factory(), name=f"{self.owner}-{name}")
        task.add_done_callback(lambda t: self._ended(name, t))
        self._tasks[name] = task

    def watch(self, name: str, task: asyncio.Task) -> None:
        """Watch a task someone else started (it cannot be restarted from here)."""
        task.add_done_callback(lambda t: self._ended(name, t))
        self._tasks[name] = task

    def alive(self, name: str) -> bool:
        task = self._tasks.get(name)
        return self.failure is None and task is not None and not task.done()

    def fail(self, exc: BaseException) -> None:
        """The engine failed (found by other means than a task's death)."""
        if self.failure is not None or self._stopping:
            return
        self.failure = exc
        log.error("%s failed: %s; it stops serving", self.owner, exc)
        for callback in self._callbacks:
            try:
                callback(exc)
            except Exception:  # one listener must not keep the others uninformed
                log.exception("%s: a failure listener raised", self.owner)

    def stopping(self) -> None:
        """An orderly stop begins: tasks that end from now on have not failed."""
        self._stopping = True

    async def stop(self) -> None:
        self.stopping()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ended(self, name: str, task: asyncio.Task) -> None:
        if self._stopping or self._tasks.get(name) is not task:
            return
        if task.cancelled():
            exc: BaseException = RuntimeError(f"background task {name!r} was cancelled")
        else:
            exc = task.exception() or RuntimeError(f"background task {name!r} returned")
        log.error("%s: background task %r died", self.owner, name, exc_info=exc)
        if isinstance(exc, Fatal) or name not in self._factories or self.failure is not None:
            cause = exc.__cause__ if isinstance(exc, Fatal) and exc.__cause__ else exc
            self.fail(cause)
            return
        now = time.monotonic()
        recent = [t for t in self._restarts.get(name, []) if now - t < self.window_s]
        if len(recent) >= self.max_restarts:
            self.fail(RuntimeError(
                f"background task {name!r} died {len(recent) + 1} times in "
                f"{self.window_s:.0f} s; last: {type(exc).__name__}: {exc}"
            ))
            return
        self._restarts[name] = [*recent, now]
        log.warning("%s: restarting background task %r", self.owner, name)
        self.start(name, self._factories[name])
