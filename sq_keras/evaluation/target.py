"""Loading the model under evaluation and the examples it is attacked on.

`load_target` takes a `.keras` file, a training model directory, a SavedModel
or a TF-Serving directory of numbered versions and returns a `Target`: the
model as a float32 `model_fn` plus what the attacks need to know about it.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

import sq_keras.layers  # noqa: F401  (registers SoftQuantization for load_model)
from sq_keras import attacks
from sq_keras import data
from sq_keras import export
from sq_keras.precision import to_policy


@dataclasses.dataclass
class Target:
    """A model under evaluation.

    Attributes:
        model_fn: Maps float32 images in [0, 1] to float32 logits.
        path: Where it was loaded from.
        keras_model: The `keras.Model`, or None for a SavedModel (no BPDA).
        has_quantizer: Whether the model holds a soft-quantization layer.
        config: The training `config.json` when found beside the model.
        input_shape: `(H, W, C)` the model takes, when known.
    """

    model_fn: object
    path: str
    keras_model: object = None
    has_quantizer: bool = False
    config: dict = dataclasses.field(default_factory=dict)
    input_shape: tuple = None


def _read_config(directory):
    path = os.path.join(directory, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _saved_model_dir(path):
    """The SavedModel under `path` (itself or its highest version), or None."""
    if not os.path.isdir(path):
        return None
    try:
        return export.latest_version_dir(path)
    except FileNotFoundError:
        return None


def _signature_shape(loaded):
    """`(H, W, C)` of a SavedModel's `serving_default` images, if declared."""
    try:
        (spec,) = loaded.signatures["serving_default"].structured_input_signature[1].values()
        shape = tuple(spec.shape[1:])
    except (KeyError, ValueError, AttributeError):
        return None
    return shape if shape and all(d is not None for d in shape) else None


def _keras_file(path):
    """`(the .keras file, the training config)` at `path`, or `(None, {})`."""
    if os.path.isfile(path) and path.endswith(".keras"):
        return path, _read_config(os.path.dirname(path))
    if os.path.isfile(os.path.join(path, "model.keras")):
        return os.path.join(path, "model.keras"), _read_config(path)
    return None, {}


def _keras_target(path, keras_file, config, policy):
    model = keras.models.load_model(keras_file, compile=False)
    if policy is not None and "output_layers" in model.get_config():
        model = to_policy(model, policy)

    # The model's outputs, with the faster input gradients attacks need.
    fast_fn = attacks.input_gradient_model(model)

    def model_fn(images):
        return tf.cast(fast_fn(images), tf.float32)

    return Target(
        model_fn=model_fn,
        path=path,
        keras_model=model,
        has_quantizer=attacks.has_quantizer(model),
        config=config,
        input_shape=tuple(model.input_shape[1:]),
    )


def _saved_model_target(path, config):
    loaded = tf.saved_model.load(path)

    def saved_model_fn(images):
        # Looked up on every call so the closure keeps `loaded` (and its
        # variables) alive.
        signature = loaded.signatures["serving_default"]
        return tf.cast(signature(images=tf.cast(images, tf.float32))["logits"], tf.float32)

    names = [v.name for v in getattr(loaded, "variables", [])]
    return Target(
        model_fn=saved_model_fn,
        path=path,
        keras_model=None,
        has_quantizer=any("threshold" in name or "quantiz" in name for name in names),
        config=config,
        input_shape=_signature_shape(loaded),
    )


def load_target(path, *, policy="float32"):
    """Loads a model to evaluate.

    Args:
        path: A `.keras` file, a training model directory holding
            `model.keras` (white-box attacks including BPDA), or a SavedModel
            directory, or a TF-Serving directory of numbered versions (the
            highest is used), whose `serving_default` signature takes float32
            `images` in [0, 1] and returns `logits` (every attack but BPDA).
        policy: Keras dtype policy for a functional `.keras` model's hidden
            layers, whatever policy it was trained under: "float32" (exact)
            or e.g. "mixed_bfloat16" (faster on CPUs with native bfloat16;
            convolution and Dense weights are then stored in bfloat16, which
            gives the same outputs); quantizers and logits stay float32.
            None keeps the saved policy.

    Returns:
        A `Target`.

    Raises:
        FileNotFoundError: Nothing loadable at `path`.
    """
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"Model path {path!r} does not exist.")
    keras_file, config = _keras_file(path)
    if keras_file is not None:
        return _keras_target(path, keras_file, config, policy)
    saved_model_dir = _saved_model_dir(path)
    if saved_model_dir is not None:
        return _saved_model_target(saved_model_dir, config)
    raise FileNotFoundError(
        f"No model at {path!r}: expected a .keras file, a directory holding "
        "model.keras (training --model_dir), a SavedModel directory or a directory "
        "of numbered SavedModel versions (training --export_dir)."
    )


def load_examples(dataset, split, *, num_examples=None, data_dir=None):
    """The first `num_examples` of a split as float32 images in [0, 1] and labels."""
    images, labels = data.load_arrays(dataset, split, data_dir=data_dir)
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)
