"""Exceptions the teacher raises; the gRPC edge maps each to one status code."""

from __future__ import annotations


class TeacherError(Exception):
    """Base class of every error the service reports to callers."""


class InvalidArgument(TeacherError):
    """The request is malformed; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceExhausted(TeacherError):
    """The bounded admission queue is full; the caller should back off and retry."""


class EngineUnavailable(TeacherError):
    """The engine failed or is shutting down; the model is not serving."""


class NotFound(TeacherError):
    """The request names an adapter that is not loaded (any more)."""


class AlreadyExists(TeacherError):
    """A load would take a name already in use (a served model, or another adapter)."""


ECHO_CHARS = 64  # of a caller's value quoted back in an error message


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """A caller's value as quoted in an error: at most ``limit`` characters, so a huge
    input cannot make a status message too large for the caller's metadata limit."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
