"""The error types every entry point reports the same way."""

from __future__ import annotations

import pickle

from clipsweep.errors import ConfigError


def test_config_error_survives_pickling_with_its_key_value_and_allowed() -> None:
    """A job in another process (Ray, submitit, joblib) sends its error back pickled."""
    error = pickle.loads(pickle.dumps(ConfigError("hydra.sweeper.storage", "sqlite:///x.db", "a URL")))
    assert isinstance(error, ConfigError)
    assert (error.key, error.value, error.allowed) == ("hydra.sweeper.storage", "sqlite:///x.db", "a URL")
    assert str(error) == "hydra.sweeper.storage='sqlite:///x.db' is not allowed: a URL"
