"""Helpers shared by the tests."""

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
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


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_app(module, *flags, timeout=300):
    """Runs `python -m <module> <flags>` from the repository root, as a user
    would; returns the `subprocess.CompletedProcess` with its text output."""
    from sq_keras import data

    env = data.environment_for_subprocess(os.environ)
    env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_mirrored_probe(test, *args):
    """Runs tests/mirrored_step_probe.py with `args` in a fresh process (it
    needs two virtual CPU devices before TensorFlow starts) and returns the
    JSON it prints; `test` asserts that the probe exited cleanly."""
    proc = subprocess.run(
        [sys.executable, os.path.join(_ROOT, "tests", "mirrored_step_probe.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": _ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
        cwd=_ROOT,
    )
    test.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_cifar10(directory, splits):
    """Writes cifar-10-binary.tar.gz with data_batch_1..5 and test_batch."""
    members = {}
    train_x, train_y = splits["train"]
    for i, (x, y) in enumerate(
        zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), start=1
    ):
        members[f"cifar-10-batches-bin/data_batch_{i}.bin"] = (x, y)
    members["cifar-10-batches-bin/test_batch.bin"] = splits["test"]
    with tarfile.open(os.path.join(directory, "cifar-10-binary.tar.gz"), "w:gz") as tar:
        for name, (x, y) in members.items():
            planes = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
            payload = np.concatenate([y[:, None].astype(np.uint8), planes], axis=1).tobytes()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _write_svhn(directory, splits):
    import scipy.io

    for split, (x, y) in splits.items():
        # SVHN stores X as [32, 32, 3, N] and the digit 0 as label 10.
        labels = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        scipy.io.savemat(
            os.path.join(directory, f"{split}_32x32.mat"),
            {"X": x.transpose(1, 2, 3, 0), "y": labels},
        )


def write_fake_dataset(name, root, *, num_train=50, num_test=20, seed=0):
    """Writes random images in `name`'s real on-disk format under `root/name/`.

    Returns:
        `(info, splits)`: a `DatasetInfo` equal to the registry's but with the
        generated files' checksums (patch it into `DATASETS`), and the written
        `{"train": (images, labels), "test": (...)}` uint8/int64 arrays.
    """
    from sq_keras.data import datasets

    info = datasets.DATASETS[name]
    rng = np.random.default_rng(seed)
    splits = {
        split: (
            rng.integers(0, 256, (n, *info.image_shape), dtype=np.uint8),
            rng.integers(0, info.num_classes, n).astype(np.int64),
        )
        for split, n in (("train", num_train), ("test", num_test))
    }
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    if name in ("mnist", "fashion_mnist"):
        for split, (x, y) in splits.items():
            images_file, labels_file = info.files[split]
            _write_idx(os.path.join(directory, images_file.name), x[..., 0])
            _write_idx(os.path.join(directory, labels_file.name), y)
    elif name == "cifar10":
        _write_cifar10(directory, splits)
    elif name == "svhn_cropped":
        _write_svhn(directory, splits)
    else:
        raise ValueError(f"No generator for {name!r}.")
    files = {
        split: tuple(
            dataclasses.replace(f, sha256=datasets._hash_file(os.path.join(directory, f.name)))
            for f in fs
        )
        for split, fs in info.files.items()
    }
    return dataclasses.replace(info, files=files), splits
