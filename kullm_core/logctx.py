"""Who a log line is about: `job_id`, `conversation`, `platform`, carried by contextvars.

Set once where a unit of work starts (the worker's job session, each adapter's per-update and
per-reply task); every line logged inside it, in any module, then carries the fields (the
entry point's handler adds them with `ContextFilter`). asyncio copies the context into each
task it creates, so fields bound in one task never leak into another.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import Context, ContextVar, copy_context

FIELDS = ("job_id", "conversation", "platform")

_CONTEXT: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("kullm_log_context", default=())


def current() -> dict[str, str]:
    return dict(_CONTEXT.get())


def bind(**fields: str | None) -> None:
    """Add fields to the current context (this task and the tasks it creates from now on).
    A None or empty value leaves the field as it was."""
    merged = current()
    merged.update({k: str(v) for k, v in fields.items() if v})
    _CONTEXT.set(tuple(merged.items()))


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """`bind` for the duration of a `with` block."""
    token = _CONTEXT.set(_CONTEXT.get())
    try:
        bind(**fields)
        yield
    finally:
        _CONTEXT.reset(token)


def fresh(**fields: str | None) -> Context:
    """A context holding only `fields`, for a long-lived task that serves many jobs (e.g.
    `asyncio.create_task(..., context=fresh(platform="telegram"))`): it must not carry the
    job of whichever task happened to start it."""
    ctx = copy_context()
    ctx.run(_CONTEXT.set, ())
    ctx.run(bind, **fields)
    return ctx


class ContextFilter(logging.Filter):
    """Puts the bound fields on each record (as attributes), unless the call set them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
