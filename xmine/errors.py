"""Exceptions raised by xmine. Every user-facing failure is one of these, with a message that
names what was wrong and where (file and line for input data)."""

from __future__ import annotations

from pathlib import Path


class XmineError(Exception):
    """Base class of every error xmine raises on purpose."""


class DataFormatError(XmineError):
    """A data file is malformed. Carries the file, the 1-based line number (if known) and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class InvalidArgumentError(XmineError, ValueError):
    """A function was called with a value outside its domain (a bad option name, mismatched shapes). A ValueError
    too, for callers that catch those."""


class ConfigError(XmineError):
    """A configuration value is invalid or unknown."""


class ModelError(XmineError):
    """A model directory (or checkpoint) is missing, incomplete, damaged or incompatible. Raised through
    `xmine.safeio.model_error`, it carries the component, the file and the problem."""

    def __init__(self, message: str, component: str | None = None, path: str | Path | None = None,
                 problem: str | None = None) -> None:
        super().__init__(message)
        self.component = component
        self.path = None if path is None else str(path)
        self.problem = problem or message
