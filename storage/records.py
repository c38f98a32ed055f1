"""What a study records, key by key: the schema its writers (workers) and readers (reports, CLI) share.

Every trial and study user attr that cnnsearch writes is named here once. A writer sets
``trial.set_user_attr(CONFIG, ...)``; a reader looks up ``trial.user_attrs.get(CONFIG)``;
neither spells the string. The values are stable: they are what optuna-dashboard shows,
what ``trials.csv`` has as columns and what older studies hold.
"""

from __future__ import annotations

# --- trial user attrs: who ran it ------------------------------------------------------------
HOST = "host"
PID = "pid"
WORKER = "worker"
DEVICE = "device"
THREADS = "threads"
STARTED = "started"
"""``time.time()`` when the worker began the trial."""
DATA_FEED = "data_feed"
"""How the trial's images reached its device: ``{"mode": "device"|"stream", "reason": ...}``."""
BACKEND = "backend"
"""``ray`` for a trial a Ray worker ran."""
GPU_IDS = "gpu_ids"
"""The Ray GPU ids of the worker (Ray workers only)."""
CUDA_VISIBLE_DEVICES = "cuda_visible_devices"
RAY_NODE = "ray_node"
LAST_HEARTBEAT = "last_heartbeat"
"""When the trial's worker last proved alive (``time.time()``), written with each heartbeat."""
HANDED_BACK = "handed_back"
"""How many times a stopped worker handed the trial back to the study as WAITING (SIGTERM; Ctrl-C with
``--on-interrupt requeue``; a stop before it started)."""

# --- trial user attrs: what it ran -----------------------------------------------------------
CONFIG = "config"
"""The complete trial config (a JSON object), as :class:`spaces.schema.TrialConfig` serialises it."""
SEED = "seed"
ORIGIN = "origin"
"""Why a trial was enqueued with known params: ``start`` (the space's start points), ``warm_start``, or
``low_cost`` (the space's ``low_cost`` values fixed in the study's first drawn trial, the rest drawn)."""
UNPRUNED_ORIGINS = ("start", "warm_start")
"""The origins of known configs, which run to the end, never pruned; every other trial is drawn by the sampler."""

# --- trial user attrs: what it measured ------------------------------------------------------
METRICS = ("val_accuracy", "val_loss", "best_val_accuracy", "epochs_run", "params", "flops", "latency_ms",
           "throughput", "train_seconds", "amp", "notes")
"""The metrics a completed trial records, each as its own user attr (so the dashboard and pandas show each).

The one list: :class:`search.trial.metrics.TrialMetrics` has a field of each name, workers write
them, ``best --json``, the report and the recipe read them.
"""
VAL_ACCURACY = "val_accuracy"
PARAMS = "params"
LATENCY_MS = "latency_ms"
TRAIN_SECONDS = "train_seconds"
EPOCHS_RUN = "epochs_run"
NOTES = "notes"
"""What the model builder or trainer adjusted to fit the data, one line each (``depth 4 clamped to 2: ...``)."""
CURVES = "curves"
"""Per-epoch ``val_accuracy``, ``val_loss``, ``train_loss`` and ``lr`` lists."""
LIVE_CURVE = "val_accuracy_curve"
"""A multi-objective trial's per-epoch val accuracy while it runs (Optuna stores no intermediate values then)."""
CONSTRAINTS = "constraints"
"""One value per constraint (``--max-params``, ``--max-latency-ms``); <= 0 means satisfied."""
CHECKPOINT = "checkpoint_artifact"
"""The artifact id of the trial's kept ``state_dict`` (``--keep-checkpoints``)."""
ARTIFACT_ERROR = "artifact_error"
"""Why a checkpoint that should have been kept was not."""
CHECKPOINT_EPOCH = "checkpoint_epoch"
"""Epochs done in the trial's latest resume checkpoint: a retry of it continues after this epoch."""
CHECKPOINT_STEP = "checkpoint_step"
"""Batches of the next epoch done in that checkpoint (0 unless it was saved mid-epoch, by a stop)."""
RESUMED_FROM_EPOCH = "resumed_from_epoch"
"""The epoch after which this trial's training continued from a checkpoint (absent: it trained from the start)."""
RESUME_NOTE = "resume_note"
"""Where the trial resumed, or why a checkpoint it found was skipped, in words."""
FOLD_VAL_ACCURACY = "fold_val_accuracy"
"""With ``--cv K``: each fold's val accuracy, in fold order (the trial's value is their mean)."""
FOLD_VAL_ACCURACY_STD = "fold_val_accuracy_std"
"""With ``--cv K``: the spread (population std) of ``fold_val_accuracy``."""

# --- trial user attrs: why it did not complete -----------------------------------------------
FAIL_REASON = "fail_reason"
"""A short tag; one of :data:`FAIL_REASONS`."""
FAIL_MESSAGE = "fail_message"
OVER_BUDGET = "over_budget"
"""The :data:`FAIL_REASON` of a trial set aside unrun: it does not count against the budget
(:func:`storage.studies.is_original`) and is never retried."""
FAIL_REASONS = {
    "pruned": "stopped early by the pruner",
    "nan_loss": "loss became NaN/inf",
    "oom": "out of memory",
    "timeout": "over --trial-timeout",
    "error": "crashed (exception)",
    "interrupted": "worker interrupted or killed",
    "storage": "lost its database mid-trial",
    "constraint": "over --max-params before training",
    "memory": "too big for the worker's memory before training",
    OVER_BUDGET: "made past the budget as the database restarted; never run",
}
"""Failure tag -> what it means, in the words the report uses."""

# --- study user attrs: what the study was made from (``search.study.spec.StudySpec.to_attrs``) ----
STUDY_DATASET = "dataset"
STUDY_DATA_DIR = "data_dir"
STUDY_IMAGE_SIZE = "image_size"
STUDY_OBJECTIVES = "objectives"
STUDY_SAMPLER = "sampler"
STUDY_PRUNER = "pruner"
STUDY_SEED = "seed"
STUDY_BUDGET = "budget"
STUDY_MAX_PARAMS = "max_params"
STUDY_SPACE = "space"
"""The space's definition, as its YAML mapping."""
STUDY_SPACE_NAME = "space_name"
STUDY_SPACE_STRICT = "space_strict"
STUDY_SPACE_FINGERPRINT = "space_fingerprint"
STUDY_BUILDER = "builder"
"""The space's own model (``model: {builder: ...}``): ``{"builder": REF, "sha256": source file hash}``, or None."""
STUDY_SPLIT = "split"
"""The split's seed and fractions."""
STUDY_VERSIONS = "versions"
"""Package versions at creation (python, cnnsearch, torch, torchvision, optuna)."""
STUDY_CV = "cv"
"""The number of cross-validation folds (``run --cv K``), or None: trials train on train, judged on val."""
STUDY_DETERMINISTIC = "deterministic"
"""Whether its trials train with deterministic kernels (``run --deterministic``): GPU trials then replay."""
STUDY_SPACE_DERIVATION = "space_derivation"
"""How the ``auto`` space was derived (``spaces.derive``): its data facts, budget and decisions; None otherwise."""

# --- study user attrs: what the first worker found in the data -----------------------------------
SPLIT_FINGERPRINT = "split_fingerprint"
SPLIT_SIZES = "split_sizes"
"""The split's seed, fractions, part sizes and fingerprint."""
FOLDS = "folds"
"""With ``--cv K``: the folds' K, seed, val sizes and fingerprint; a worker whose folds differ is refused."""
DATA_FINGERPRINT = "data_fingerprint"
"""The images' content (pixels, labels, class names): a worker with other data under the same names is refused."""
CLASSES = "classes"
INPUT_SHAPE = "input_shape"

# --- trial system attrs (Optuna's own) -----------------------------------------------------------
RETRY_OF = "failed_trial"
"""Set by Optuna's retry callback on the retry of a trial whose worker died."""
RETRY_HISTORY = "retry_history"
"""Set by Optuna's retry callback on a retry: the numbers of the failed trials it follows, oldest first."""
FIXED_PARAMS = "fixed_params"
"""Set by ``Study.enqueue_trial``: the params an enqueued trial runs with."""
