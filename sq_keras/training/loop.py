"""`train`: the training run, from configuration to exported model.

The run reads like Keras's trainer: the step computes (`steps.py`), the loop
calls it over each epoch's batches and then its end-of-epoch hooks
(measure, summarise, record, checkpoint), and the run directory records
(`rundir.py`). Each part below is one named stage of `train`.
"""

import dataclasses
import math
import os
import sys
import time

import keras
import tensorflow as tf

from sq_keras import data
from sq_keras import distribute
from sq_keras import export
from sq_keras import layers
from sq_keras import progress
from sq_keras import provenance
from sq_keras.training.components import build_components
from sq_keras.training.errors import TrainingError
from sq_keras.training.methods import METHODS
from sq_keras.training.methods import takes_indices
from sq_keras.training.metrics import evaluate_accuracy
from sq_keras.training.metrics import input_gradient_stats
from sq_keras.training.rundir import RunDir
from sq_keras.training.rundir import check_whole_memory
from sq_keras.training.rundir import check_writable_parent
from sq_keras.training.rundir import prepare_model_dir
from sq_keras.training.schedules import alpha_at
from sq_keras.training.weight_averaging import averaged_weights


def _log(message):
    print(message, flush=True)


@dataclasses.dataclass
class _Run:
    """A run in progress: what the stages of `train` share."""

    config: object
    info: data.DatasetInfo
    strategy: tf.distribute.Strategy
    source: data.TrainingData
    run_dir: RunDir
    model: keras.Model = None
    optimizer: keras.optimizers.Optimizer = None
    step: object = None
    epoch_var: tf.Variable = None
    checkpoint: tf.train.Checkpoint = None
    restore_manager: tf.train.CheckpointManager = None
    save_manager: tf.train.CheckpointManager = None
    history: list = dataclasses.field(default_factory=list)
    # `(index, count)`: with count > 1 this worker reads and keeps the memory
    # of its own examples only.
    memory_shard: tuple = (0, 1)
    memory_checkpoint: tf.train.Checkpoint = None
    memory_manager: tf.train.CheckpointManager = None

    @property
    def sharded(self):
        return self.memory_shard[1] > 1

    @property
    def drop_remainder(self):
        # Several replicas need equal batches on every step, so they drop the
        # last partial batch; one device keeps it.
        return self.strategy.num_replicas_in_sync > 1

    @property
    def steps_per_epoch(self):
        """Steps of one epoch; None for a stream that does not say its size."""
        num_train, batch_size = self.source.num_train, self.config.batch_size
        if not num_train:
            return None
        if self.sharded:
            # Every worker takes as many steps as the one with fewest examples.
            workers = self.memory_shard[1]
            return (num_train // workers) // (batch_size // workers)
        if self.drop_remainder:
            return num_train // batch_size
        return math.ceil(num_train / batch_size)


def _open_run_dir(config, strategy):
    """The chief guards and records `model_dir`; other workers get their own."""
    if not distribute.is_chief(strategy):
        worker_dir = distribute.worker_dir(config.model_dir, strategy)
        os.makedirs(worker_dir, exist_ok=True)
        return RunDir(config.model_dir, worker_dir)
    prepare_model_dir(config, environment=provenance.environment())
    if config.export_dir:
        check_writable_parent(config.export_dir, "--export_dir")
    return RunDir(config.model_dir)


def _setup(config, strategy):
    """Seeds, the strategy, the data and the run directory."""
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    if strategy is None:
        strategy = distribute.make_strategy(config.strategy)
    info = data.get_info(config.dataset)
    source = data.load_training_data(
        config, info, add_noise=METHODS[config.method].noise, with_indices=takes_indices(config)
    )
    shard = _memory_shard(config, strategy)
    return _Run(config, info, strategy, source, _open_run_dir(config, strategy), memory_shard=shard)


def _memory_shard(config, strategy):
    """`(index, count)` of this worker's memory shard; `(0, 1)`: the memory is whole.

    Raises:
        ValueError: The global batch does not split evenly over the replicas.
    """
    if not takes_indices(config):
        return 0, 1
    shard = distribute.worker_shard(strategy)
    replicas = strategy.num_replicas_in_sync
    if shard[1] > 1 and config.batch_size % replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} does not split evenly over the "
            f"{replicas} replicas of {shard[1]} workers, which each read their own examples "
            f"of every batch. Use a multiple of {replicas}."
        )
    return shard


def _build(run):
    """The model, optimiser, step and the checkpoint that holds them.

    A step with state of its own (the perturbation memory of `sq_free`) has
    it checkpointed too.
    """
    run.model, run.optimizer, run.step = build_components(
        run.config,
        run.info,
        run.strategy,
        num_train=run.source.num_train,
        steps_per_epoch=run.steps_per_epoch,
        memory_shard=run.memory_shard,
    )
    with run.strategy.scope():
        run.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    run.checkpoint = tf.train.Checkpoint(
        model=run.model,
        optimizer=run.optimizer,
        epoch=run.epoch_var,
        **getattr(run.step, "state", {}),
    )
    run.restore_manager, run.save_manager = run.run_dir.checkpoint_managers(run.checkpoint)
    if run.sharded:
        run.memory_checkpoint = tf.train.Checkpoint(**run.step.memory.shard_state)
        run.memory_manager = tf.train.CheckpointManager(
            run.memory_checkpoint, run.run_dir.memory_dir(*run.memory_shard), max_to_keep=2
        )


def _restore(run, log):
    """Resumes from the latest checkpoint, if any; returns the first epoch to train."""
    latest = run.restore_manager.latest_checkpoint
    if latest:
        run.checkpoint.restore(latest).expect_partial()
        epochs_done = int(run.epoch_var.numpy())
        _restore_memory(run, latest, epochs_done, log)
        run.history = run.run_dir.read_history(epochs_done)
        log(f"Resumed from {latest} (epoch {epochs_done}).")
    return int(run.epoch_var.numpy())


def _restore_memory(run, latest, epochs_done, log):
    """This worker's memory shard of the restored epoch; a whole memory must be in `latest`.

    Raises:
        TrainingError: The run was trained with another number of workers.
    """
    if not takes_indices(run.config) or epochs_done == 0:
        return
    if not run.sharded:
        check_whole_memory(latest, run.config.model_dir)
        return
    path = run.run_dir.memory_checkpoint(epochs_done, *run.memory_shard, latest)
    run.memory_checkpoint.restore(path).assert_existing_objects_matched()
    log(f"Restored this worker's perturbation memory shard from {path}.")


def _log_start(run, log):
    config = run.config
    log(
        f"Training {config.model} with method {config.method} on {run.source.num_train} "
        f"{config.dataset} examples for {config.epochs} epochs "
        f"({run.steps_per_epoch} steps each), policy {config.mixed_precision}, "
        f"{run.strategy.num_replicas_in_sync} replica(s)."
    )
    memory = getattr(run.step, "memory", None)
    if memory is not None:
        log(memory.describe())


def _epoch_title(config, epoch, alpha):
    """`Epoch 3/10`, with the quantizer's alpha when the method has one."""
    title = f"Epoch {epoch}/{config.epochs}"
    if METHODS[config.method].quantizer:
        title += f" (alpha {alpha:.3g})"
    return title


class _ProgressBar:
    """Keras's progress bar over one epoch's steps, under its title, on a terminal only.

    A redrawn bar would write carriage returns and escape codes into a log
    file; there the one summary line per epoch is the output.
    """

    def __init__(self, steps, title):
        self._bar = None
        if progress.is_terminal():
            print(title, flush=True)
            self._bar = keras.utils.Progbar(
                steps, stateful_metrics=["loss", "accuracy"], unit_name="step", interval=0.1
            )

    def update(self, step, *, loss, accuracy):
        if self._bar:
            self._bar.update(step, [("loss", loss), ("accuracy", accuracy)])

    def interrupt(self):
        """Ends the bar's line, so that what follows starts on a new one."""
        if self._bar:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _divergence_error(loss, epoch, step_index, latest_checkpoint):
    if latest_checkpoint:
        kept = (
            f"The last good checkpoint ({latest_checkpoint}, epoch "
            f"{epoch}) is kept; a rerun resumes from it."
        )
    else:
        kept = "No checkpoint had been written yet."
    return TrainingError(
        f"Loss became {loss} at epoch {epoch + 1}, step {step_index + 1}; training "
        f"stopped. {kept} Lower --learning_rate or use "
        "--mixed_precision=float32."
    )


def _run_steps(run, epoch, title):
    """Trains one epoch; returns `(loss_sum, correct, seen)` over its examples.

    Raises:
        TrainingError: The loss became NaN or infinite.
    """
    bar = _ProgressBar(run.steps_per_epoch, title)
    loss_sum = correct = seen = 0.0
    for i, batch in enumerate(_distributed_batches(run, epoch)):
        batch_loss, batch_correct, batch_n = run.step(*batch)
        n = int(batch_n)
        loss = float(batch_loss) / n
        if not math.isfinite(loss):
            bar.interrupt()
            raise _divergence_error(loss, epoch, i, run.restore_manager.latest_checkpoint)
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
        seen += n
        bar.update(i + 1, loss=loss_sum / seen, accuracy=correct / seen)
    return loss_sum, correct, seen


def _distributed_batches(run, epoch):
    """The epoch's batches, split over the replicas.

    With a sharded memory each worker reads its own examples
    (`shard=memory_shard`), as many steps as every other worker.
    """
    if not run.sharded:
        return run.strategy.experimental_distribute_dataset(
            run.source.train_batches(epoch, run.drop_remainder)
        )
    index, count = run.memory_shard
    replicas_per_worker = run.strategy.num_replicas_in_sync // count

    def worker_batches(context):
        if context.input_pipeline_id != index:
            raise RuntimeError(
                f"Worker {index} of {count} was given input pipeline "
                f"{context.input_pipeline_id} of {context.num_input_pipelines}."
            )
        batch_size = context.get_per_replica_batch_size(run.config.batch_size)
        batches = run.source.train_batches(
            epoch, True, shard=run.memory_shard, batch_size=batch_size
        )
        return batches.take(run.steps_per_epoch * replicas_per_worker)

    return run.strategy.distribute_datasets_from_function(worker_batches)


def _train_epoch(run, epoch):
    """Sets the epoch's alpha and trains; returns the epoch's record so far."""
    alpha = alpha_at(run.config, epoch)
    layers.set_alpha(run.model, alpha)
    start = time.perf_counter()
    loss_sum, correct, seen = _run_steps(run, epoch, _epoch_title(run.config, epoch + 1, alpha))
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "seconds": seconds,
    }


def _measure(run, record):
    """Adds the test accuracy, input-gradient stats and quantizer state to `record`.

    With `ema_decay` these are the averaged weights' (`weight_averaging`).
    """
    with averaged_weights(run.model, run.optimizer):
        record["test_accuracy"] = evaluate_accuracy(run.model, run.source.eval_batches())
        record["grad_l1"], record["grad_zero_fraction"] = input_gradient_stats(
            run.model, run.source.grad_x, run.source.grad_y
        )
    for k, layer in enumerate(layers.quantization_layers(run.model)):
        record[f"quantizer_{k}_thresholds"] = layer.thresholds.numpy().tolist()
        record["alpha"] = float(layer.alpha.numpy())


def _write_summaries(writer, record, model):
    """The epoch's TensorBoard scalars and threshold histograms."""
    with writer.as_default(step=record["epoch"]):
        tf.summary.scalar("train/loss", record["train_loss"])
        tf.summary.scalar("train/accuracy", record["train_accuracy"])
        tf.summary.scalar("test/accuracy", record["test_accuracy"])
        tf.summary.scalar("input_gradient/grad_l1", record["grad_l1"])
        tf.summary.scalar("input_gradient/zero_fraction", record["grad_zero_fraction"])
        tf.summary.scalar("time/epoch_seconds", record["seconds"])
        for k, layer in enumerate(layers.quantization_layers(model)):
            tf.summary.scalar(f"quantizer_{k}/alpha", float(layer.alpha.numpy()))
            tf.summary.histogram(f"quantizer_{k}/thresholds", layer.thresholds.numpy())
    writer.flush()


def _record_epoch(run, record):
    """History, epoch weights, then the checkpoint of the finished epoch."""
    # History first: if the process dies before the checkpoint is saved,
    # the resumed run truncates history to the checkpoint's epoch.
    run.history.append(record)
    run.run_dir.write_history(run.history)
    if run.config.keep_epoch_weights:
        with averaged_weights(run.model, run.optimizer):
            run.run_dir.save_epoch_weights(run.model, record["epoch"])
    run.epoch_var.assign(record["epoch"])
    if run.sharded:
        # Every worker's shard of the epoch is on disk before any run
        # checkpoint names the epoch: a resumed run finds all of them.
        run.memory_manager.save(checkpoint_number=record["epoch"])
        _barrier(run.strategy)
    run.save_manager.save(checkpoint_number=record["epoch"])


def _barrier(strategy):
    """Returns once every worker has called it (a collective sum)."""
    ones = strategy.run(lambda: tf.constant(1))
    strategy.reduce("SUM", ones, axis=None).numpy()


def _log_epoch(config, record, log):
    """One plain line per epoch, the same on a terminal and in a log file."""
    log(
        f"{_epoch_title(config, record['epoch'], record.get('alpha'))}: "
        f"{record['seconds']:.1f}s  train loss {record['train_loss']:.4f}  "
        f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
        f"grad_l1 {record['grad_l1']:.4g}  zero-grad {record['grad_zero_fraction']:.1%}"
    )


def _results(run, model_path):
    """The final metrics: the last epoch's, or a test pass if none was recorded."""
    history, model = run.history, run.model
    final = history[-1] if history else {}
    quantizers = layers.quantization_layers(model)
    return {
        "dataset": run.config.dataset,
        "method": run.config.method,
        "epochs_done": len(history),
        "test_accuracy": (
            final["test_accuracy"] if final else evaluate_accuracy(model, run.source.eval_batches())
        ),
        "train_accuracy": final.get("train_accuracy"),
        "train_loss": final.get("train_loss"),
        "grad_l1": final.get("grad_l1"),
        "grad_zero_fraction": final.get("grad_zero_fraction"),
        "seconds_per_epoch": [h["seconds"] for h in history],
        "total_train_seconds": sum(h["seconds"] for h in history),
        "thresholds": [layer.thresholds.numpy().tolist() for layer in quantizers],
        "alpha": [float(layer.alpha.numpy()) for layer in quantizers],
        "model_path": model_path,
        "export_path": None,
        "export_policy": None,
    }


def _rebuilt_policy(config):
    """The policy the model is rebuilt under for export; None to export it as trained."""
    return None if config.export_policy == "training" else config.exported_policy


def _export(run, results):
    """Exports the SavedModel with its metadata; returns the version's path."""
    config = run.config
    metadata = {
        "dataset": config.dataset,
        "method": config.method,
        "eps": config.eps,
        "class_names": list(run.source.class_names),
        "test_accuracy": results["test_accuracy"],
        "policy": config.exported_policy,
        **provenance.environment(),
    }
    try:
        return export.export_saved_model(
            run.model, config.export_dir, metadata=metadata, policy=_rebuilt_policy(config)
        )
    except OSError as e:
        raise TrainingError(f"Cannot export to {config.export_dir}: {e}") from e


def _finish(run, first_epoch, log):
    """Saves the model; the chief exports and writes `results.json`.

    With `ema_decay` the averaged weights are saved and exported.

    A finished run rerun as is trains nothing and keeps its model, results
    and export: its `model.keras` is not saved again, so the file's digest,
    which resumable evaluations record, stays the same. It is exported only
    if `export_dir` asks for an export it lacks: its first, or one under
    another `export_policy`.
    """
    config = run.config
    previous = _finished_results(run, first_epoch) if first_epoch >= config.epochs else None
    if previous is not None and _has_the_export_asked_for(previous, config):
        log(_already_finished_message(config.model_dir, previous))
        return previous
    with averaged_weights(run.model, run.optimizer):
        # A finished run asked for its first export keeps its saved model.
        results = previous or _results(run, run.run_dir.save_model(run.model))
        if not run.run_dir.chief:
            return results
        if config.export_dir:
            results["export_path"] = _export(run, results)
            results["export_policy"] = config.exported_policy
            log(
                f"Exported SavedModel to {results['export_path']} (policy {config.exported_policy})"
            )
    run.run_dir.write_results(results)
    log(
        f"Done: test accuracy {results['test_accuracy']:.4f} after {len(run.history)} "
        f"epochs, {results['total_train_seconds']:.0f}s of training."
    )
    return results


def _has_the_export_asked_for(results, config):
    """Whether a finished run's `results` name the export `config` asks for, if any:
    a version under `export_dir` in the asked policy that is still on disk (a
    deleted export, or another `export_dir`, is exported again).

    Results recorded before `export_policy` existed exported the run's
    `mixed_precision` policy.
    """
    if not config.export_dir:
        return True
    path = results.get("export_path")
    exported = results.get("export_policy") or config.mixed_precision
    return (
        bool(path)
        and os.path.isdir(path)
        and os.path.abspath(os.path.dirname(path)) == os.path.abspath(config.export_dir)
        and exported == config.exported_policy
    )


def _already_finished_message(model_dir, results):
    """What a rerun of a finished run says: the run, and where its export is."""
    export_path, policy = results.get("export_path"), results.get("export_policy")
    where = "it was not exported (pass --export_dir to export it)"
    if export_path:
        where = f"its SavedModel is {export_path}" + (f" (policy {policy})" if policy else "")
    return (
        f"{model_dir} holds this run, already finished after {results['epochs_done']} epochs "
        f"(test accuracy {results['test_accuracy']:.4f}); {where}. Nothing was trained, "
        "saved or exported. To train more epochs, rerun with a higher --epochs."
    )


def _finished_results(run, epochs_done):
    """The recorded results of the run's `epochs_done` epochs, its model saved; else None.

    A run killed after its last checkpoint but before saving its model and
    results is not finished yet, even if an earlier, shorter run of it left
    its results.
    """
    previous = run.run_dir.read_results()
    if previous is None or not os.path.isfile(run.run_dir.model_path):
        return None
    return previous if previous.get("epochs_done") == epochs_done else None


def train(config, *, log=_log, strategy=None):
    """Trains, checkpoints, logs and exports one model; resumes if possible.

    Under a multi-worker strategy every worker calls this; only the chief
    writes the run's files (the others write their checkpoints and final
    model under `<model_dir>/workers/`).

    Args:
        config: A `TrainConfig`. Its `mixed_precision` must name the policy
            already set globally (the app sets it first).
        log: Callable taking one line of progress text.
        strategy: A `tf.distribute.Strategy`; default: built from
            `config.strategy`.

    Returns:
        The dict written to `results.json`.

    Raises:
        ValueError: Invalid configuration.
        TrainingError: `model_dir` holds another run, the loss diverged, or
            an output cannot be written.
        sq_keras.data.DataError: Dataset files missing or corrupt.
    """
    run = _setup(config.resolved(), strategy)
    _build(run)
    first_epoch = _restore(run, log)
    if first_epoch < run.config.epochs:
        _train_epochs(run, first_epoch, log)
    return _finish(run, first_epoch, log)


def _train_epochs(run, first_epoch, log):
    """Trains, measures, records and checkpoints each epoch from `first_epoch` on."""
    writer = tf.summary.create_file_writer(run.run_dir.logs_dir)
    _log_start(run, log)
    for epoch in range(first_epoch, run.config.epochs):
        record = _train_epoch(run, epoch)
        _measure(run, record)
        _write_summaries(writer, record, run.model)
        _record_epoch(run, record)
        _log_epoch(run.config, record, log)
