"""Exporting trained models as self-contained, TensorFlow-Serving-ready SavedModels.

Exports follow TensorFlow Serving's layout, `<base_dir>/<version>/`, where
`version` is an integer that grows with every export of the same model; TF
Serving serves the highest. The SavedModel holds the traced forward pass, so it
serves with TensorFlow alone, without sq_keras:

```python
path = export_saved_model(model, "saved_models/mnist_sq_noisy", metadata={...})
served = tf.saved_model.load(path)                      # .../mnist_sq_noisy/1
out = served.signatures["serving_default"](images=batch)  # float32 in [0, 1]
out = served.signatures["serve_uint8"](images=raw)        # uint8 in [0, 255]
out["logits"], out["probabilities"], out["classes"]

# A model trained under mixed_bfloat16, served in float32: the graph that
# sq_keras.evaluation attacks, so served predictions equal the evaluated ones.
export_saved_model(model, "saved_models/mnist_sq_noisy", policy="float32")
```

Inputs are checked inside the graph: a batch with the wrong rank, size or
channel count, or float pixels outside [0, 1], raises `InvalidArgumentError`
with a message naming the expected input, rather than a cryptic kernel error
or a silently wrong prediction. A wrong dtype is refused by the signature
itself (`InvalidArgumentError: ... expected to be a float tensor`).
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from sq_keras import precision

METADATA_FILE = "sq_keras_metadata.json"
SIGNATURES = ("serving_default", "serve_uint8")


def versions(base_dir):
    """The integer versions exported under `base_dir`, ascending."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir) if name.isdigit())


def latest_version_dir(path):
    """`path` itself if it is a SavedModel, else its highest version directory.

    Raises:
        FileNotFoundError: If `path` holds neither.
    """
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(
            f"{path} is neither a SavedModel nor a directory of numbered SavedModel versions."
        )
    return os.path.join(path, str(found[-1]))


def _check_images(images, shape):
    """Asserts `images` is `[N, *shape]` with pixels in [0, 1] (in-graph)."""
    expected = f"float32 images of shape [N, {', '.join(map(str, shape))}] with values in [0, 1]"
    actual = tf.shape(images)
    # Pad so that a tensor of the wrong rank still compares element-wise.
    padded = tf.concat([actual, tf.fill([len(shape) + 1], -1)], axis=0)[1 : len(shape) + 1]
    shape_ok = tf.logical_and(
        tf.equal(tf.rank(images), len(shape) + 1),
        tf.reduce_all(tf.equal(padded, tf.constant(shape, tf.int32))),
    )
    check_shape = tf.debugging.Assert(
        shape_ok, [f"Expected {expected}; received a tensor of shape", actual]
    )
    with tf.control_dependencies([check_shape]):
        in_range = tf.logical_and(tf.reduce_all(images >= 0.0), tf.reduce_all(images <= 1.0))
        check_range = tf.debugging.Assert(
            in_range,
            [
                f"Expected {expected} (use the serve_uint8 signature for 0-255 pixels); "
                "received values between",
                tf.reduce_min(images),
                "and",
                tf.reduce_max(images),
            ],
        )
    with tf.control_dependencies([check_range]):
        return tf.identity(images)


def export_saved_model(model, base_dir, *, version=None, metadata=None, policy=None):
    """Writes `model` as version `version` of a SavedModel under `base_dir`.

    Signatures (both return float32 `logits` and `probabilities` and int64
    `classes`, the argmax):

    * `serving_default`: float32 `images` `[N, H, W, C]` in [0, 1];
    * `serve_uint8`: uint8 `images` `[N, H, W, C]` in [0, 255].

    The export is written to a temporary directory beside its destination and
    renamed into place, so a crash never leaves a half-written version.

    Args:
        model: A Keras model mapping images in [0, 1] to logits.
        base_dir: The model's directory; versions are its numbered children.
        version: Positive integer; default one more than the highest present.
            An existing version of that number is replaced.
        metadata: Optional JSON-serialisable dict stored as
            `assets.extra/sq_keras_metadata.json` inside the version.
        policy: Keras dtype policy the exported graph computes in, e.g.
            "float32" for the graph `sq_keras.evaluation` attacks: a
            functional `model` is exported as its copy under it
            (`sq_keras.precision.to_policy`). None: the model as it is.

    Returns:
        The path of the written version directory.

    Raises:
        ValueError: `version` is not a positive integer.
        OSError: `base_dir` cannot be written.
    """
    base_dir = os.path.abspath(base_dir)
    if version is None:
        version = (versions(base_dir) or [0])[-1] + 1
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version}")
    os.makedirs(base_dir, exist_ok=True)
    target = os.path.join(base_dir, str(version))
    if policy is not None:
        model = precision.to_policy(model, policy)
    shape = tuple(int(d) for d in model.input_shape[1:])

    def serve_float(images):
        logits = tf.cast(model(_check_images(images, shape), training=False), tf.float32)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1),
        }

    def serve_uint8(images):
        return serve_float(tf.cast(images, tf.float32) / 255.0)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve_float,
        input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="images")],
    )
    archive.add_endpoint(
        name="serve_uint8",
        fn=serve_uint8,
        input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name="images")],
    )
    tmp = tempfile.mkdtemp(prefix=".export-", dir=base_dir)
    try:
        archive.write_out(tmp, verbose=False)
        if metadata is not None:
            extra = os.path.join(tmp, "assets.extra")
            os.makedirs(extra, exist_ok=True)
            with open(os.path.join(extra, METADATA_FILE), "w") as f:
                json.dump(metadata, f, indent=2, sort_keys=True)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=base_dir)
            os.rename(target, os.path.join(old, "model"))
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
