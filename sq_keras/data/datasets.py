"""Dataset registry and loaders.

Every dataset comes from one of two sources:

* a local directory holding the dataset's canonical files, checksums verified
  (`data_dir` argument, else the `SQ_KERAS_DATA_DIR` environment variable;
  files under `<dir>/<dataset>/`);
* tensorflow-datasets, when no local directory is given. If the tfds copy is
  not prepared yet and the download host cannot be reached, loading fails at
  once instead of entering tfds's multi-minute retry loop.

```python
images, labels = load_arrays("mnist", "test", data_dir="../shared/data")
dataset = load("mnist", "train[:2000]")  # tf.data of (float32 image, int64 label)
```

Split strings are "train" or "test", optionally sliced as in tfds:
"train[:50000]", "train[50000:]".
"""

import dataclasses
import gzip
import hashlib
import os
import re
import socket

import numpy as np
import tensorflow as tf

DATA_DIR_ENV = "SQ_KERAS_DATA_DIR"


class DataError(RuntimeError):
    """A dataset could not be found, verified or fetched."""


@dataclasses.dataclass(frozen=True)
class DataFile:
    name: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the rest of sq_keras needs to know about a dataset.

    Attributes:
        name: Registry name, also the tfds name and the local sub-directory.
        image_shape: `(H, W, C)` of one image.
        num_classes: Number of labels.
        class_names: Human-readable label names.
        eps: Default l-inf threat radius in [0, 1] pixel units.
        model: Default model name in `sq_keras.models`.
        files: Canonical files per split for the local source.
        reader: Reads `(images uint8 [N,H,W,C], labels int64 [N])` from the
            split's local files.
        source_help: How to obtain the canonical files.
        download_host: Host tfds downloads from, probed before a download.
    """

    name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple
    eps: float
    model: str
    files: dict
    reader: object
    source_help: str
    download_host: str


def _read_idx(path, expected_dims):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes.")
    dims = raw[3]
    if dims != expected_dims:
        raise DataError(f"{path} has {dims} dimensions, expected {expected_dims}.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} values for shape {shape}.")
    return body.reshape(shape)


def _read_idx_pair(paths):
    images_path, labels_path = paths
    images = _read_idx(images_path, 3)[..., None]
    labels = _read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels."
        )
    return images, labels


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        eps=0.3,
        model="madry_mnist",
        files={
            "train": (
                DataFile(
                    "train-images-idx3-ubyte.gz",
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                ),
                DataFile(
                    "train-labels-idx1-ubyte.gz",
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                ),
            ),
            "test": (
                DataFile(
                    "t10k-images-idx3-ubyte.gz",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                ),
                DataFile(
                    "t10k-labels-idx1-ubyte.gz",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            ),
        },
        reader=_read_idx_pair,
        source_help=(
            "They are the canonical MNIST files (the ones tensorflow-datasets "
            "downloads from https://storage.googleapis.com/cvdf-datasets/mnist/)."
        ),
        download_host="storage.googleapis.com",
    ),
}

_SPLIT_RE = re.compile(r"^(?P<base>[a-z]+)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def get_info(name):
    """Returns the `DatasetInfo` of a registered dataset.

    Raises:
        ValueError: If `name` is not registered; the message lists the names.
    """
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[name]


def resolve_data_dir(data_dir=None):
    """`data_dir` if given, else `$SQ_KERAS_DATA_DIR`, else None (use tfds)."""
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def _parse_split(info, split):
    match = _SPLIT_RE.match(split)
    if not match or match.group("base") not in info.files:
        raise ValueError(
            f"Unknown split {split!r} for {info.name}. Valid splits: "
            f"{', '.join(sorted(info.files))}, optionally sliced like 'train[:1000]'."
        )
    start = int(match.group("start")) if match.group("start") else None
    stop = int(match.group("stop")) if match.group("stop") else None
    return match.group("base"), slice(start, stop)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_help(info):
    lines = [f"  {f.name}  sha256 {f.sha256}" for fs in info.files.values() for f in fs]
    return "\n".join(lines)


def _read_local(info, base, root):
    directory = os.path.join(root, info.name)
    paths = []
    for data_file in info.files[base]:
        path = os.path.join(directory, data_file.name)
        if not os.path.isfile(path):
            raise DataError(
                f"Missing {path}.\nThe local {info.name} source needs these files "
                f"in {directory}/:\n{_files_help(info)}\n{info.source_help}\n"
                f"Put them there, or unset --data_dir/{DATA_DIR_ENV} to use "
                "tensorflow-datasets with network access."
            )
        actual = _sha256(path)
        if actual != data_file.sha256:
            raise DataError(
                f"Corrupt {path}: sha256 {actual}, expected {data_file.sha256}.\n"
                f"Replace it with the canonical file. Expected files:\n"
                f"{_files_help(info)}\n{info.source_help}"
            )
        paths.append(path)
    try:
        return info.reader(paths)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"Could not read {info.name} from {directory}: {e}") from e


def _host_reachable(host, timeout=3.0):
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _read_tfds(info, base):
    import tensorflow_datasets as tfds

    # Read $TFDS_DATA_DIR now rather than at tfds import time.
    builder = tfds.builder(info.name, data_dir=os.environ.get("TFDS_DATA_DIR"))
    if not builder.is_prepared() and not _host_reachable(info.download_host):
        raise DataError(
            f"{info.name} is not in the tensorflow-datasets cache ({builder.data_dir}) "
            f"and {info.download_host} cannot be reached.\n"
            f"Pass --data_dir (or set {DATA_DIR_ENV}) to a directory whose "
            f"'{info.name}/' sub-directory holds:\n{_files_help(info)}\n"
            f"{info.source_help}"
        )
    builder.download_and_prepare()
    dataset = builder.as_dataset(split=base, as_supervised=True, batch_size=-1)
    images, labels = tfds.as_numpy(dataset)
    return images, labels.astype(np.int64)


def load_arrays(name, split, data_dir=None):
    """Loads a split into memory.

    Args:
        name: A registered dataset name, see `DATASETS`.
        split: "train" or "test", optionally sliced ("train[:2000]").
        data_dir: Directory with `<name>/` holding the canonical files. Falls
            back to `$SQ_KERAS_DATA_DIR`, then to tensorflow-datasets.

    Returns:
        `(images, labels)`: uint8 `[N, H, W, C]` and int64 `[N]` numpy arrays.

    Raises:
        ValueError: Unknown dataset or split.
        DataError: Files missing or corrupt, or offline without a local copy.
    """
    info = get_info(name)
    base, index = _parse_split(info, split)
    root = resolve_data_dir(data_dir)
    if root:
        images, labels = _read_local(info, base, root)
    else:
        images, labels = _read_tfds(info, base)
    if images.shape[1:] != info.image_shape:
        raise DataError(
            f"{name} images have shape {images.shape[1:]}, expected {info.image_shape}."
        )
    return images[index], labels[index]


def load(name, split, data_dir=None):
    """Loads a split as an unbatched `tf.data.Dataset`.

    Args and Raises: as `load_arrays`.

    Returns:
        A dataset of `(image, label)`: float32 `[H, W, C]` in [0, 1] and int64.
    """
    images, labels = load_arrays(name, split, data_dir)
    return tf.data.Dataset.from_tensor_slices((images.astype(np.float32) / 255.0, labels))
