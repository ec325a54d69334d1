"""The run directory: what a training run records, and the guard around it.

Layout of `model_dir` (the chief writes it; other workers of a multi-worker
run write their own checkpoints, logs and model under `workers/`):

* `config.json`: the resolved configuration and the environment the run
  started in; a rerun must match it (`RESUME_FREE_KEYS` aside) and may not
  ask for fewer epochs than the checkpoints hold;
* `checkpoints/`: one `tf.train.Checkpoint` per epoch, the run resumes from
  the latest;
* `history.json`: per-epoch metrics, written before each checkpoint;
* `epochs/`: the weights after every epoch, with `keep_epoch_weights`;
* `logs/`: TensorBoard events;
* `model.keras`: the final model; `results.json`: the final metrics;
* `memory_shard_<w>_of_<W>/`: under a multi-worker run whose perturbation
  memory is sharded, each worker's own shard, one checkpoint per epoch
  beside the chief's (the chief's in `model_dir`, the others' in their
  `workers/` directories); a worker resumes from its own.

```python
prepare_model_dir(config, environment=provenance.environment())
run_dir = RunDir(config.model_dir)
history = run_dir.read_history(epochs_done=2)
run_dir.write_history(history + [record])
```
"""

import dataclasses
import glob
import os
import re
import shutil
import tempfile

import tensorflow as tf

from sq_keras import jsonio
from sq_keras.training.errors import TrainingError

# Keys that may differ between a run and its resumption without changing what
# is trained.
RESUME_FREE_KEYS = (
    "epochs",
    "export_dir",
    "export_policy",
    "data_dir",
    "overwrite",
    "environment",
    "resumed_environments",
    "strategy",
    "keep_epoch_weights",
)

# Options whose default became the dataset's: the value a run recorded before
# the option existed trained with.
_EARLIER_DEFAULTS = {"lr_schedule": "constant"}

# The epoch counter in a run's checkpoints (`tf.train.Checkpoint(epoch=...)`).
_EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"

# What `--overwrite` removes of a different run.
RUN_OUTPUTS = ("checkpoints", "logs", "history.json", "results.json", "model.keras")

# The perturbation memory in a run's checkpoints, when it is kept whole.
_MEMORY_KEY = "perturbations/.ATTRIBUTES/VARIABLE_VALUE"
_SHARD_DIR = re.compile(r"memory_shard_(\d+)_of_(\d+)$")


def config_differences(previous, record, defaults):
    """`{key: (was, now)}` for the keys of `record` that change what is trained.

    Args:
        previous: The `config.json` record found in `model_dir`.
        record: The record of the run starting now.
        defaults: Field defaults: a run recorded before an option existed ran
            with its default.
    """
    diffs = {}
    for key, value in record.items():
        was = previous.get(key, defaults.get(key))
        if key not in RESUME_FREE_KEYS and was != value:
            diffs[key] = (was, value)
    return diffs


def _different_run_error(model_dir, diffs):
    lines = "\n".join(f"  {k}: was {a!r}, now {b!r}" for k, (a, b) in diffs.items())
    return TrainingError(
        f"{model_dir} holds a run with a different configuration:\n"
        f"{lines}\nUse another --model_dir, or --overwrite to discard that run."
    )


def epochs_done(model_dir):
    """The epochs trained by the run in `model_dir`: its latest checkpoint's count, else 0."""
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        return 0
    return int(tf.train.load_checkpoint(latest).get_tensor(_EPOCH_KEY))


def _fewer_epochs_error(model_dir, done, epochs):
    return TrainingError(
        f"{model_dir} holds a run that has already trained {done} epochs; --epochs={epochs} "
        f"asks for fewer, and trained epochs cannot be undone. Rerun with --epochs={done} to "
        f"keep that run as it is, or more to continue training it. To train {epochs} epochs "
        "from scratch, use another --model_dir, or --overwrite to discard that run."
    )


def _replaces_previous_run(config, previous, record):
    """Whether `config` starts afresh over the run recorded as `previous`.

    Raises:
        TrainingError: Without `config.overwrite`, the run differs from
            `previous` in what is trained, or asks for fewer epochs than it
            has already trained.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    defaults.update(_EARLIER_DEFAULTS)
    diffs = config_differences(previous, record, defaults)
    if diffs and not config.overwrite:
        raise _different_run_error(config.model_dir, diffs)
    if diffs:
        return True
    done = epochs_done(config.model_dir)
    if config.epochs < done and not config.overwrite:
        raise _fewer_epochs_error(config.model_dir, done, config.epochs)
    return config.epochs < done


def resumed_environments(previous, environment):
    """The environment entries of a resumed run's record.

    A resumed run keeps the environment (commit, versions) it was started
    in; later ones are listed, each once in a row.

    Returns:
        `{"environment": ..., "resumed_environments": [...]}`, or `{}` when
        `previous` records no environment.
    """
    started = previous.get("environment")
    if started is None:
        return {}
    later = previous.get("resumed_environments", [])
    if environment != (later[-1] if later else started):
        later = later + [environment]
    return {"environment": started, "resumed_environments": later}


def clear_run(model_dir):
    """Removes another run's outputs (`RUN_OUTPUTS`, the chief's memory shards) from `model_dir`."""
    for name in RUN_OUTPUTS + tuple(_shard_dirs(model_dir)):
        target = os.path.join(model_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)


def prepare_model_dir(config, *, environment):
    """Creates `model_dir` and records `config`, refusing to mix a different run into it.

    Args:
        config: A resolved `TrainConfig` (any dataclass with `model_dir` and
            `overwrite`).
        environment: `sq_keras.provenance.environment()` of this process.

    Returns:
        The record written to `config.json`.

    Raises:
        TrainingError: `model_dir` holds a run with a different configuration,
            or one that has trained more than `config.epochs` epochs (and
            `config.overwrite` is off), or cannot be written.
    """
    path = os.path.join(config.model_dir, "config.json")
    record = {**dataclasses.asdict(config), "environment": environment}
    if os.path.exists(path):
        previous = jsonio.read_json(path)
        if _replaces_previous_run(config, previous, record):
            clear_run(config.model_dir)
        else:
            record.update(resumed_environments(previous, environment))
    try:
        os.makedirs(config.model_dir, exist_ok=True)
        jsonio.write_json(path, record, sort_keys=True)
    except OSError as e:
        raise TrainingError(f"Cannot write to --model_dir {config.model_dir}: {e}") from e
    return record


def check_writable_parent(path, what):
    """Fails now, not after hours of training, if `path` cannot be created.

    Args:
        path: A directory the run will create at its end.
        what: How the user names it, e.g. "--export_dir".

    Raises:
        TrainingError: The parent cannot be written, or `path` is a file.
    """
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrainingError(
            f"{what} {path} is not writable ({e}). Choose a directory you can write to."
        ) from e
    if os.path.exists(path) and not os.path.isdir(path):
        raise TrainingError(f"{what} {path} exists and is not a directory.")


def _shard_dirs(directory):
    """The names of the memory shard directories in `directory`."""
    paths = glob.glob(os.path.join(directory, "memory_shard_*_of_*"))
    return sorted(os.path.basename(p) for p in paths if _SHARD_DIR.search(p))


def _shard_counts(directory):
    """The worker counts `directory`'s memory shards were made for."""
    return sorted({int(_SHARD_DIR.search(name).group(2)) for name in _shard_dirs(directory)})


def checkpoint_has_memory(checkpoint_path):
    """Whether a run's checkpoint holds the whole perturbation memory."""
    return _MEMORY_KEY in dict(tf.train.list_variables(checkpoint_path))


def _resume_workers_error(what, workers):
    return TrainingError(
        f"{what}; resume it with {workers} worker(s). The perturbations of a worker's examples "
        "live only in that worker's memory shard, so a run's number of workers cannot change."
    )


def check_whole_memory(checkpoint_path, model_dir):
    """Refuses to resume a run with a whole memory from a checkpoint of a sharded one.

    Raises:
        TrainingError: `checkpoint_path` holds no memory: the run was
            trained with its memory sharded over several workers.
    """
    if checkpoint_has_memory(checkpoint_path):
        return
    counts = _shard_counts(model_dir) or ["several"]
    raise _resume_workers_error(
        f"{checkpoint_path} holds no perturbation memory: the run kept it sharded over "
        f"{counts[-1]} workers",
        counts[-1],
    )


def epoch_weights_path(model_dir, epoch):
    """Where `keep_epoch_weights` puts the weights after `epoch` (1-based)."""
    return os.path.join(model_dir, "epochs", f"epoch_{epoch:03d}.weights.h5")


def _save_atomically(save, path, tmp_name):
    """`save(tmp)` beside `path`, then renames it over `path`."""
    tmp = os.path.join(os.path.dirname(path), tmp_name)
    save(tmp)
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files one worker of a run reads and writes.

    The chief writes the run's records (history, epoch weights, results);
    for another worker those writes are skipped, and its checkpoints, logs
    and model go to its own `worker_dir`, where nobody reads them.

    Attributes:
        model_dir: The run's directory; every worker restores from its
            checkpoints.
        worker_dir: A non-chief worker's own directory; None on the chief.
    """

    model_dir: str
    worker_dir: str = None

    @property
    def chief(self):
        return self.worker_dir is None

    @property
    def out_dir(self):
        """Where this worker's checkpoints, logs and model go."""
        return self.model_dir if self.chief else self.worker_dir

    @property
    def logs_dir(self):
        return os.path.join(self.out_dir, "logs")

    @property
    def history_path(self):
        return os.path.join(self.model_dir, "history.json")

    @property
    def results_path(self):
        return os.path.join(self.model_dir, "results.json")

    def checkpoint_managers(self, checkpoint):
        """`(restore_manager, save_manager)` of `checkpoint`.

        Every worker restores the chief's checkpoints; non-chief workers save
        their own copies (saving may involve collectives) where nobody reads
        them.
        """
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(self.model_dir, "checkpoints"), max_to_keep=2
        )
        if self.chief:
            return manager, manager
        own = tf.train.CheckpointManager(
            checkpoint, os.path.join(self.out_dir, "checkpoints"), max_to_keep=1
        )
        return manager, own

    def memory_dir(self, shard, shards):
        """Where worker `shard` of `shards` checkpoints its perturbation memory shard."""
        return os.path.join(self.out_dir, f"memory_shard_{shard}_of_{shards}")

    def memory_checkpoint(self, epochs_done, shard, shards, run_checkpoint):
        """This worker's memory shard checkpoint of epoch `epochs_done`.

        Args:
            run_checkpoint: The run's checkpoint it resumes from (of the
                same epoch).

        Raises:
            TrainingError: There is none: the run was trained with another
                number of workers, or with its memory whole.
        """
        path = os.path.join(self.memory_dir(shard, shards), f"ckpt-{epochs_done}")
        if os.path.exists(path + ".index"):
            return path
        counts = [c for c in _shard_counts(self.out_dir) if c != shards]
        if counts:
            raise _resume_workers_error(
                f"{self.out_dir} holds this worker's perturbation memory sharded over "
                f"{counts[-1]} workers, not {shards}",
                counts[-1],
            )
        if checkpoint_has_memory(run_checkpoint):
            raise _resume_workers_error(
                f"{run_checkpoint} holds the whole perturbation memory: the run was trained "
                "on one worker",
                1,
            )
        raise TrainingError(
            f"No perturbation memory shard of epoch {epochs_done} in "
            f"{self.memory_dir(shard, shards)}, which {run_checkpoint} needs: worker "
            f"{shard} of {shards} did not take part in that epoch, or its shard was lost. "
            "Resume with the workers the run was trained with, or --overwrite to start afresh."
        )

    def read_history(self, epochs_done):
        """The recorded epochs up to the restored checkpoint's `epochs_done`.

        A run killed between writing history and saving its checkpoint
        recorded one epoch more than it kept: that one is dropped.
        """
        if not os.path.exists(self.history_path):
            return []
        return jsonio.read_json(self.history_path)[:epochs_done]

    def write_history(self, history):
        """Writes the per-epoch records (chief only)."""
        if self.chief:
            jsonio.write_json(self.history_path, history, sort_keys=True)

    def save_epoch_weights(self, model, epoch):
        """Saves `model`'s weights after `epoch` (1-based; chief only)."""
        if not self.chief:
            return
        path = epoch_weights_path(self.model_dir, epoch)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _save_atomically(model.save_weights, path, ".tmp.weights.h5")

    @property
    def model_path(self):
        """Where this worker's final `model.keras` goes."""
        return os.path.join(self.out_dir, "model.keras")

    def save_model(self, model):
        """Saves the final `model.keras` atomically; returns its path."""
        _save_atomically(model.save, self.model_path, ".model-tmp.keras")
        return self.model_path

    def read_results(self):
        """The recorded `results.json`, or None if the run has not finished."""
        if not os.path.exists(self.results_path):
            return None
        return jsonio.read_json(self.results_path)

    def write_results(self, results):
        """Writes `results.json` (chief only)."""
        if self.chief:
            jsonio.write_json(self.results_path, results, sort_keys=True)
