"""The one exception type for bad input, so every entry point can report it the same way."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work, detected before any training or tracking write.

    It carries the key, the offending value and what is allowed so the CLI can print one line
    that a user can act on without reading a traceback.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, Any, str]]:
        """Picklable: a job on a Ray worker or in a submitit process returns its error to the sweep."""
        return (ConfigError, (self.key, self.value, self.allowed))

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key placed under a config group (``threshold`` → ``clip.threshold``)."""
        return ConfigError(f"{prefix}.{self.key}", self.value, self.allowed)


class UsageError(Exception):
    """A bad command line that is not one config value (an unknown flag, overrides Hydra rejects).

    The CLI prints its message as one line and exits 2, like a ConfigError.
    """


class SweepFailed(SystemExit):
    """A sweep that ran but failed as a whole (failures beyond ``max_failure_rate``): exit code 1.

    Raised after the sweep has closed its runs and written its results, so that a pipeline can tell
    a failed sweep from a good one; the message carries the most common failure reasons. A
    ``SystemExit`` so that it passes Hydra's ``run_and_report``, which turns any ``Exception`` into
    a printed traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Refused(SystemExit):
    """A ``ConfigError`` found inside Hydra's run (where only a ``SystemExit`` passes its
    ``run_and_report`` without a traceback): the CLI prints it as one line and exits 2."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(2)
        self.error = error

    def __str__(self) -> str:
        return str(self.error)
