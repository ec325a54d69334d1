"""Helpers shared by the tests."""

import os
import subprocess
import sys
import textwrap

import numpy as np

# Loads a SavedModel with TensorFlow alone and saves its outputs.
_SERVE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, images_path, out_path, signature = sys.argv[1:]
    served = tf.saved_model.load(export_dir)
    fn = served.signatures[signature]
    out = fn(images=tf.constant(np.load(images_path)))
    assert not any(m.split(".")[0] == "sq_keras" for m in sys.modules), "imported sq_keras"
    np.savez(out_path, **{k: v.numpy() for k, v in out.items()})
    """
)


def serve_in_fresh_process(export_dir, images, workdir, signature="serving_default"):
    """Runs the SavedModel in a new Python process that never imports sq_keras."""
    images_path = os.path.join(workdir, "images.npy")
    out_path = os.path.join(workdir, "out.npz")
    np.save(images_path, images)
    env = {**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [sys.executable, "-c", _SERVE, export_dir, images_path, out_path, signature],
        check=True,
        cwd=workdir,
        env=env,
        timeout=300,
    )
    return dict(np.load(out_path))
