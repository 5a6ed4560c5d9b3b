"""Names that other processes read: a worker, a job on another node, ``clipsweep export`` next week, the
MLflow UI. Renaming one breaks stored studies and runs, so they are written once, here.

Optuna study and trial user attributes, the environment variables a sweep hands its jobs, and the
MLflow tags clipsweep sets on its runs.
"""

from __future__ import annotations

# Optuna trial user attributes
NORMS_ATTR = "clipsweep.norms"
"""The job's norm spans (``NormSegments.to_dict``)."""
CONFIG_ATTR = "clipsweep.config"
"""The job's resolved config (model, task, clip, optim, train)."""
FIXED_ATTR = "clipsweep.fixed_overrides"
"""The sweep's fixed command-line overrides (what every trial ran with)."""
CONFIG_DIR_ATTR = "clipsweep.config_dir"
"""The sweep's ``--config-dir`` (absolute; ``./conf`` counts), where a user's own groups live."""
STATUS_ATTR = "clipsweep.status"
"""How the job's run ended: finished, diverged or stopped (pruned)."""
FAIL_REASON_ATTR = "clipsweep.fail_reason"
"""Set on trials the sweep failed (exception, NaN, missing metric): they spend the failure budget."""
SURPLUS_ATTR = "clipsweep.surplus"
"""Set on a trial asked beyond ``n_trials`` by a racing worker; it is failed at once, never run."""
INTERRUPTED_ATTR = "clipsweep.interrupted"
"""Set on a trial whose worker was stopped by SIGINT/SIGTERM: failed, and a copy re-enqueued."""
LOST_ATTR = "clipsweep.lost"
"""Set on a trial whose job the launcher's engine lost (worker killed, time limit): failed, and a copy
re-enqueued up to ``max_retry`` times."""
RETRY_OF_ATTR = "clipsweep.retry_of"
"""Set on the re-enqueued copy of an interrupted trial: the number it retries."""
REPEAT_OF_ATTR = "clipsweep.repeat_of"
"""Set on a trial asked with a completed trial's parameters: told that trial's values, never run."""
RUN_ID_ATTR = "mlflow_run_id"
"""The trial's MLflow run, recorded by the job as soon as the run starts."""

# Optuna study user attributes
PARENT_RUN_ATTR = "clipsweep.parent_run_id"
"""The MLflow parent run of the latest sweep invocation."""
TRACKING_URI_ATTR = "clipsweep.tracking_uri"
"""Where that parent run lives (password masked)."""
CONCLUDED_ATTR = "clipsweep.concluded"
"""Prefix of ``<prefix>.<N>``: the parent run that made the end-of-sweep recommendation over N
completed trials (claimed atomically, so that of several workers ending together one makes it)."""
ENQUEUED_ATTR = "clipsweep.enqueued"
"""Prefix of ``<prefix>.<hash of the parameters>``: an ``enqueue`` point this study has taken (once)."""
VALIDATION_ATTR = "clipsweep.validation"
"""The last validation (``Validation.to_dict``), reused by ``export``."""

# Environment variables
STORAGE_ENV = "CLIPSWEEP_STORAGE"
"""The Optuna storage URL (a password stays out of every file a sweep writes)."""
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
"""The MLflow tracking URI (MLflow's own variable)."""
TRIAL_ID_ENV = "CLIPSWEEP_TRIAL_ID"
TRIAL_NUMBER_ENV = "CLIPSWEEP_TRIAL_NUMBER"
STUDY_ENV = "CLIPSWEEP_STUDY"
PARENT_RUN_ENV = "CLIPSWEEP_PARENT_RUN_ID"
TRACKING_PIN_ENV = "CLIPSWEEP_TRACKING_URI"
"""What a sweep hands each job (through ``hydra.job.env_set``) to find its trial, its parent run and
(``TRACKING_PIN_ENV``, ``STORAGE_ENV``: absolute, when they hold no password) the sweep's stores."""

# MLflow tags
ROLE_TAG = "clipsweep.role"
"""sweep (a parent run), validate or calibrate; trial runs are nested under their parent."""
STUDY_TAG = "clipsweep.study"
STORAGE_TAG = "clipsweep.storage"
SAMPLER_TAG = "clipsweep.sampler"
PRUNER_TAG = "clipsweep.pruner"
TRIAL_NUMBER_TAG = "clipsweep.trial_number"
TRIAL_STATE_TAG = "clipsweep.trial_state"
STATUS_TAG = "clipsweep.status"
STEPS_DONE_TAG = "clipsweep.steps_done"
CLIP_METHOD_TAG = "clipsweep.clip_method"
DEVICE_TAG = "clipsweep.device"
BEST_TRIAL_TAG = "clipsweep.best_trial_number"
RECOMMENDED_TAG = "clipsweep.recommended"
RECOMMENDED_TRIAL_TAG = "clipsweep.recommended_trial"
