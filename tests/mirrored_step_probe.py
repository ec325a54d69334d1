"""Compares one device with MirroredStrategy over 2 logical CPUs.

`python tests/mirrored_step_probe.py METHOD` runs one training step of METHOD
both ways and prints JSON with both losses and the largest weight difference
(and, for a method with per-example state such as `sq_free`, the largest
difference of its perturbation memory);
`python tests/mirrored_step_probe.py attack` runs FGSM and PGD from
`sq_keras.evaluation` both ways on a briefly trained model and prints the
robust accuracies; `python tests/mirrored_step_probe.py robust_fit METHOD`
runs `sq_keras.RobustModel.fit` of METHOD for one step both ways and prints
both losses, the largest weight difference and, under the mirrored strategy,
the farthest crafted example from its clean one. Run as a script: the
logical devices must be set before TensorFlow starts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import distribute  # noqa: E402
from sq_keras import models  # noqa: E402
from sq_keras import training  # noqa: E402


def one_step(strategy, images, labels, method):
    config = training.TrainConfig(method=method, mixed_precision="float32").resolved()
    keras.utils.set_random_seed(0)
    # The batch is examples 0..N-1 of a training set twice its size, so a
    # step with per-example state also keeps the memory of unseen examples.
    num_train = 2 * len(labels)
    # steps_per_epoch: MNIST's default schedule (piecewise) needs the run's length.
    model, _, step = training.build_components(
        config, data.get_info(config.dataset), strategy, num_train=num_train, steps_per_epoch=10
    )
    before = [v.numpy() for v in model.trainable_variables]
    batch = (images, labels)
    if training.METHODS[method].indexed:
        batch += (np.arange(len(labels), dtype=np.int64),)
    dataset = tf.data.Dataset.from_tensors(batch)
    for distributed in strategy.experimental_distribute_dataset(dataset):
        loss_sum, correct, n = step(*distributed)
    after = [v.numpy() for v in model.trainable_variables]
    change = max(float(np.abs(a - b).max()) for a, b in zip(before, after))
    state = {name: variable.numpy() for name, variable in getattr(step, "state", {}).items()}
    return float(loss_sum) / int(n), int(n), after, change, state


def compare_attacks():
    from sq_keras import evaluation

    raw, labels = data.load_arrays("mnist", "train[:2000]")
    keras.utils.set_random_seed(0)
    model = models.build("madry_mnist", input_shape=(28, 28, 1), num_classes=10)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(raw.astype(np.float32) / 255.0, labels, batch_size=100, epochs=1, verbose=0)
    target = evaluation.Target(
        model_fn=lambda x: model(x, training=False), path="probe", keras_model=model
    )
    images, test_labels = evaluation.load_examples("mnist", "test", num_examples=200)
    settings = evaluation.AttackSettings(pgd_steps=10)
    results = {}
    for name in ("default", "mirrored"):
        report = evaluation.evaluate(
            target,
            images,
            test_labels,
            attacks=["fgsm", "pgd"],
            eps_values=[0.1],
            settings=settings,
            num_classes=10,
            batch_size=100,
            progress=False,
            add_large_eps=False,
            strategy=distribute.make_strategy(name),
        )
        results[name] = {attack: report.robust_accuracy(attack, 0.1) for attack in report.attacks}
    print(json.dumps(results))


def _small_cnn():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def robust_fit(strategy, images, labels, method):
    """One `RobustModel.fit` step under `strategy`: loss, weights (the free methods'
    memory last), farthest crafted pixel."""
    import sq_keras

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = sq_keras.RobustModel(
            _small_cnn(), method=method, eps=0.3, add_quantizer=True, num_train=len(labels)
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    crafted = model.craft(images, labels, seed=0, indices=np.arange(len(labels)))
    history = model.fit(images, labels, batch_size=len(labels), epochs=1, shuffle=False, verbose=0)
    weights = [v.numpy() for v in model.trainable_variables]
    if model.perturbations is not None:
        weights.append(model.perturbations.numpy())
    return history.history["loss"][0], weights, float(np.abs(crafted - images).max())


def compare_robust_fit(images, labels, method):
    default = distribute.make_strategy("default")
    single_loss, single_w, _ = robust_fit(default, images, labels, method)
    mirrored = distribute.make_strategy("mirrored")
    mirrored_loss, mirrored_w, distance = robust_fit(mirrored, images, labels, method)
    print(
        json.dumps(
            {
                "replicas": mirrored.num_replicas_in_sync,
                "single_loss": single_loss,
                "mirrored_loss": mirrored_loss,
                "max_weight_diff": max(
                    float(np.abs(a - b).max()) for a, b in zip(single_w, mirrored_w)
                ),
                "max_crafted_distance": distance,
            }
        )
    )


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    method = sys.argv[1] if len(sys.argv) > 1 else "sq_natural"
    if method == "attack":
        compare_attacks()
        return
    raw, labels = data.load_arrays("mnist", "train[:64]")
    images = raw.astype(np.float32) / 255.0
    if method == "robust_fit":
        compare_robust_fit(images, labels, sys.argv[2])
        return
    single_loss, single_n, single_w, change, single_state = one_step(
        distribute.make_strategy("default"), images, labels, method
    )
    mirrored = distribute.make_strategy("mirrored")
    mirrored_loss, mirrored_n, mirrored_w, _, mirrored_state = one_step(
        mirrored, images, labels, method
    )
    result = {
        "replicas": mirrored.num_replicas_in_sync,
        "single_loss": single_loss,
        "mirrored_loss": mirrored_loss,
        "examples": [single_n, mirrored_n],
        "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(single_w, mirrored_w)),
        "max_weight_change": change,
    }
    for name, value in single_state.items():
        other = mirrored_state[name]
        result[f"{name}_max_diff"] = float(np.abs(value - other).max())
        result[f"{name}_share_equal"] = float(np.mean(value == other))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
