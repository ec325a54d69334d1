"""Exporting trained models as self-contained SavedModels.

The SavedModel holds the traced forward pass, so it serves with TensorFlow
alone (`tf.saved_model.load`, TensorFlow Serving) without importing sq_keras:

```python
export_saved_model(model, "saved_models/mnist_sq_noisy", metadata={...})
served = tf.saved_model.load("saved_models/mnist_sq_noisy")
out = served.signatures["serving_default"](images=batch)  # logits, probabilities, classes
```
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

METADATA_FILE = "sq_keras_metadata.json"


def export_saved_model(model, export_dir, *, metadata=None):
    """Writes `model` as a SavedModel with a `serving_default` signature.

    The signature takes float32 `images` `[N, H, W, C]` in [0, 1] and returns
    float32 `logits` and `probabilities` and int64 `classes` (the argmax).
    The export is written to a temporary sibling directory and renamed into
    place, so a crash never leaves a half-written model at `export_dir`; an
    existing export there is replaced.

    Args:
        model: A Keras model mapping images in [0, 1] to logits.
        export_dir: Destination directory.
        metadata: Optional JSON-serialisable dict stored as
            `assets.extra/sq_keras_metadata.json` inside the export.

    Returns:
        `export_dir`.
    """
    export_dir = os.path.abspath(export_dir)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    input_shape = tuple(model.input_shape[1:])

    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec((None, *input_shape), tf.float32, name="images")],
    )
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        if metadata is not None:
            extra = os.path.join(tmp, "assets.extra")
            os.makedirs(extra, exist_ok=True)
            with open(os.path.join(extra, METADATA_FILE), "w") as f:
                json.dump(metadata, f, indent=2, sort_keys=True)
        if os.path.exists(export_dir):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
            os.rename(export_dir, os.path.join(old, "model"))
            os.rename(tmp, export_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir
