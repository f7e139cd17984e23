"""Optuna studies in an RDB (SQLAlchemy URL): opening storage, naming, recording, queries.

Studies are plain Optuna studies: ``optuna trials``, ``optuna best-trial`` and
optuna-dashboard read them as they are. The package is split by job, each module saying why:

- ``errors``: what a database failure means (``classify``, ``cause``) and the one retry
  policy (``RETRY``);
- ``engine``: opening a storage, with its timeouts and the checks made before a command works;
- ``trials``: a finished Ray trial as a ``TrialRecord``, its ``FrozenTrial``, the idempotent
  ``record_trials``;
- ``studies``: loading and querying studies, the rows the CLI prints;
- ``versions``: the schema version of creditsweep's own tables (Optuna's are Optuna's).

Importers use ``from search import storage as st`` and ``st.name``: every name is re-exported
here, so that moving a function between modules changes no importer.
"""

import optuna

from search.storage.engine import (CONNECT_TIMEOUT_S, SQLITE_BUSY_TIMEOUT_S,
                                   STATEMENT_TIMEOUT_MS, connect_args, open_storage)
from search.storage.errors import RETRY, Failure, RetryPolicy, cause, classify
from search.storage.studies import (PARAMS, best_trial, load_study, ranked_complete,
                                    single_direction, study_names, study_summaries, trial_rows)
from search.storage.trials import (TrialRecord, add_trial, record_trials,
                                   recorded_numbers, recorded_ray_ids, to_frozen_trial)
from search.urls import (DEFAULT_STORAGE, PASSWORD_FILE_ENV, STORAGE_ENV, mask_password,
                         redact, storage_url)

__all__ = [
    # search.urls
    "DEFAULT_STORAGE", "PASSWORD_FILE_ENV", "STORAGE_ENV", "mask_password", "redact",
    "storage_url",
    # errors
    "Failure", "RETRY", "RetryPolicy", "cause", "classify",
    # engine
    "CONNECT_TIMEOUT_S", "SQLITE_BUSY_TIMEOUT_S", "STATEMENT_TIMEOUT_MS", "connect_args",
    "open_storage",
    # trials
    "TrialRecord", "add_trial", "record_trials", "recorded_numbers",
    "recorded_ray_ids", "to_frozen_trial",
    # studies
    "PARAMS", "best_trial", "load_study", "ranked_complete", "single_direction",
    "study_names", "study_summaries", "trial_rows",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)
