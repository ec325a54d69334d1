"""Training: one run loop shared by every method.

A method names three things: whether the model has a `SoftQuantization`
front, whether the data pipeline adds noise, and which train step runs. All
methods share the model, data pipeline, optimiser, logging, checkpoints and
export, so their costs and results compare directly.

```python
config = TrainConfig(dataset="mnist", method="sq_noisy", epochs=10,
                     model_dir="runs/sq", export_dir="saved_models/mnist_sq_noisy",
                     data_dir="../shared/data")
results = train(config)   # resumes from runs/sq/checkpoints if present
```

Layout of `model_dir`:

* `config.json`: the resolved configuration (a rerun must match it);
* `checkpoints/`: one `tf.train.Checkpoint` per epoch (model, optimiser,
  epoch counter, and the perturbation memory of `free` / `sq_free`), the run
  resumes from the latest;
* `memory_shard_<w>_of_<W>/`: under `multi_worker`, where each worker keeps
  its own shard of that memory (the others' under `workers/`);
* `history.json`: per-epoch metrics and wall times, written every epoch;
* `logs/`: TensorBoard events (loss, accuracy, `grad_l1`, alpha, thresholds);
* `model.keras`: the final Keras model, quantizer included, for white-box
  evaluation;
* `results.json`: final metrics.

Modules: `config` (`TrainConfig`, its defaults and checks), `methods` (the
registry of methods), `steps` (one train step per kind), `free` (free
adversarial training: the step), `perturbation_memory` (where it keeps each
example's perturbation, a worker's shard of them, or none), `seeding` (per-step seeds),
`fast_backward` (a faster first-convolution input gradient for the steps),
`schedules` (alpha per epoch, learning rate per step), `components` (the
model, optimiser and step of a configuration), `metrics` (per-epoch
measurements), `rundir` (the run directory), `loop` (`train`).
"""

from sq_keras.training.components import build_components
from sq_keras.training.components import build_optimizer
from sq_keras.training.components import quantizer_settings
from sq_keras.training.config import EXPORT_POLICIES
from sq_keras.training.config import TrainConfig
from sq_keras.training.errors import TrainingError
from sq_keras.training.free import FREE_LOSSES
from sq_keras.training.free import FreeUpdate
from sq_keras.training.free import build_free_step
from sq_keras.training.free import shared_backward_model
from sq_keras.training.loop import train
from sq_keras.training.methods import METHODS
from sq_keras.training.methods import Method
from sq_keras.training.methods import takes_indices
from sq_keras.training.metrics import evaluate_accuracy
from sq_keras.training.metrics import input_gradient_stats
from sq_keras.training.perturbation_memory import FREE_INITS
from sq_keras.training.perturbation_memory import FREE_MEMORIES
from sq_keras.training.perturbation_memory import MEMORY_DTYPES
from sq_keras.training.perturbation_memory import MemoryBudgetError
from sq_keras.training.perturbation_memory import PerturbationMemory
from sq_keras.training.perturbation_memory import ReplayStart
from sq_keras.training.perturbation_memory import ShardedMemory
from sq_keras.training.rundir import RunDir
from sq_keras.training.rundir import epoch_weights_path
from sq_keras.training.schedules import ALPHA_SCHEDULES
from sq_keras.training.schedules import LR_SCHEDULES
from sq_keras.training.schedules import LearningRate
from sq_keras.training.schedules import alpha_at
from sq_keras.training.schedules import learning_rate
from sq_keras.training.steps import STEP_BUILDERS
from sq_keras.training.steps import build_fgsm_rs_step
from sq_keras.training.steps import build_gradnorm_step
from sq_keras.training.steps import build_pgd_step
from sq_keras.training.steps import build_standard_step
from sq_keras.training.steps import gradnorm_loss

__all__ = [
    "ALPHA_SCHEDULES",
    "EXPORT_POLICIES",
    "FREE_INITS",
    "FREE_LOSSES",
    "FREE_MEMORIES",
    "FreeUpdate",
    "LR_SCHEDULES",
    "LearningRate",
    "MEMORY_DTYPES",
    "METHODS",
    "Method",
    "MemoryBudgetError",
    "PerturbationMemory",
    "ReplayStart",
    "RunDir",
    "STEP_BUILDERS",
    "ShardedMemory",
    "TrainConfig",
    "TrainingError",
    "alpha_at",
    "build_components",
    "build_fgsm_rs_step",
    "build_free_step",
    "build_gradnorm_step",
    "build_optimizer",
    "build_pgd_step",
    "build_standard_step",
    "epoch_weights_path",
    "evaluate_accuracy",
    "gradnorm_loss",
    "input_gradient_stats",
    "learning_rate",
    "quantizer_settings",
    "shared_backward_model",
    "takes_indices",
    "train",
]
