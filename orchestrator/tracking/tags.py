"""The tags and names by which the sweep's runs are found again."""

KIND = "orchestrator.kind"  # "sweep" on the parent run, "trial" on each child run
SWEEP_NAME = "orchestrator.sweep"
SWEEP_RUN_ID = "orchestrator.sweep_run_id"  # on each child: its parent's run id
SWEEP_FINGERPRINT = "orchestrator.sweep_fingerprint"
CONFIG_HASH = "orchestrator.config_hash"  # a trial's identity: its parameters, seed included
GROUP = "orchestrator.group"  # shared by the repeats of one combination: the hash without seed
SEED = "orchestrator.seed"  # the seed a trial was trained with, when the sweep has one
REPEATS = "orchestrator.repeats"  # on the parent run: the seeds each combination is trained with
TRIAL_ID = "orchestrator.trial_id"
STATUS = "orchestrator.status"  # finished, stopped, diverged, failed, killed
ERROR = "orchestrator.error"
METRIC = "orchestrator.metric"
MODE = "orchestrator.mode"
BEST_RUN_ID = "orchestrator.best_run_id"
MODEL_REFERENCE = "orchestrator.model"
DATA_REFERENCE = "orchestrator.data"
DATA_OPTIONS = "orchestrator.data_options"
HOSTNAME = "orchestrator.hostname"
NODE_IP = "orchestrator.node_ip"
NODE_ID = "orchestrator.node_id"  # the Ray node a trial ran on
GPU_IDS = "orchestrator.gpu_ids"  # the GPU ids Ray assigned a trial, comma-separated
CUDA_VISIBLE_DEVICES = "orchestrator.cuda_visible_devices"  # as the trial's process saw it
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: nests child runs under the parent in the UI

MODEL_ARTIFACT_DIR = "model"
LEADERBOARD_ARTIFACT = "leaderboard.csv"  # on the parent run: every trial, ranked
COMPARE_ARTIFACT_DIR = "compare"  # on the parent run: `orchestrator compare`'s report
STOPPED_EARLY = "orchestrator.stopped_early"  # why no further trial started, if so
DRIVER = "orchestrator.driver"  # host:pid of the process running the sweep, for resuming safely
EXECUTIONS = "orchestrator.executions"  # how many times the sweep was started (resumes + 1)
CHECKPOINT = "orchestrator.checkpoint"  # the trial's checkpoint folder, to log its model later
RETRIES = "orchestrator.retries"  # how often a trial was started again after failing
#: The id a run was created under from a sweep's journal: a journal sent again after a crash
#: finds the run by it rather than creating it twice.
JOURNAL_ID = "orchestrator.journal_id"
STOPPED_BY = "orchestrator.stopped_by"  # what stopped a trial early (a scheduler, the budget)
#: How ``STOPPED_BY`` begins for a trial the time budget cut short: it was interrupted, not
#: judged, so a resumed sweep trains it again.
TIME_BUDGET = "the time budget"
PARAMS_HISTORY = "orchestrator.params_history"  # PBT: the parameters a trial had, by epoch
COPIED_FROM = "orchestrator.copied_from"  # PBT: whose weights a trial took, at which epoch
