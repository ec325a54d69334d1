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
import tarfile

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
        augment: Default training augmentation, see `sq_keras.data.AUGMENTATIONS`.
        num_thresholds: Default quantizer thresholds K. Levels at least 2 eps
            apart (K + 1 <= 1 / (2 eps)) keep an eps-perturbation from
            crossing more than one threshold.
        streaming: Too large for memory: read with `load_stream` from a
            prepared tensorflow-datasets copy (manual download), never with
            `load_arrays`.
        tfds_splits: Our split name -> tensorflow-datasets split name, when
            they differ.
        method: Default training method in `sq_keras.training.METHODS`: the
            recipe chosen on held-out training data by `apps.reproduce` where
            that comparison was run (MNIST, see results/mnist.md), the paper's
            recipe `sq_noisy` elsewhere.
        lr_schedule: Default learning-rate schedule of every method (part of
            the chosen recipe on MNIST).
        free_step_scale: Default step per visit of the free methods, in units
            of eps (part of the chosen recipe on MNIST).
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
    augment: str = "none"
    num_thresholds: int = 1
    streaming: bool = False
    tfds_splits: dict = None
    method: str = "sq_noisy"
    lr_schedule: str = "constant"
    free_step_scale: float = 1.0


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


def _read_idx_pair(paths, split):
    del split  # one pair of files per split
    images_path, labels_path = paths
    images = _read_idx(images_path, 3)[..., None]
    labels = _read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels."
        )
    return images, labels


_CIFAR_RECORD = 1 + 32 * 32 * 3
_CIFAR_MEMBERS = {
    "train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("cifar-10-batches-bin/test_batch.bin",),
}


def _read_cifar10_binary(paths, split):
    """CIFAR-10's binary release: records of 1 label byte + 3072 pixel bytes,
    one 32x32 plane per colour (R, G, B)."""
    (archive,) = paths
    chunks = []
    with tarfile.open(archive, "r:gz") as tar:
        for name in _CIFAR_MEMBERS[split]:
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise DataError(f"{archive} has no member {name}.")
            chunks.append(member.read())
    raw = np.frombuffer(b"".join(chunks), np.uint8)
    if raw.size % _CIFAR_RECORD:
        raise DataError(f"{archive}: {split} batches are not whole 3073-byte records.")
    records = raw.reshape(-1, _CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


def _read_svhn_mat(paths, split):
    """SVHN's cropped-digits .mat files: X is [32, 32, 3, N], y is [N, 1] with
    the digit 0 stored as label 10."""
    del split
    import scipy.io

    (path,) = paths
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a bad file
        raise DataError(f"Could not read {path} as a MATLAB file: {e}") from e
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)).astype(np.uint8))
    labels = mat["y"].reshape(-1).astype(np.int64) % 10
    return images, labels


_MNIST_HOST = "storage.googleapis.com"
_FASHION_HOST = "fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_CIFAR_SHA = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"

# The 32x32 colour sets share their threat model (eps = 8/255, as Madry et al.
# and Wong et al. use), model and quantizer: K = 7 keeps neighbouring levels
# 1/8 apart, more than 2 eps.
_COLOUR_32 = {
    "image_shape": (32, 32, 3),
    "num_classes": 10,
    "eps": 8 / 255,
    "model": "preact_resnet18",
    "num_thresholds": 7,
}

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
        download_host=_MNIST_HOST,
        # The held-out selection's winner, sq_free_large_step_piecewise
        # (results/mnist_selection/mnist.md).
        method="sq_free",
        lr_schedule="piecewise",
        free_step_scale=1.25,
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        eps=0.1,
        model="madry_mnist",
        files={
            "train": (
                DataFile(
                    "train-images-idx3-ubyte.gz",
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                ),
                DataFile(
                    "train-labels-idx1-ubyte.gz",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                ),
            ),
            "test": (
                DataFile(
                    "t10k-images-idx3-ubyte.gz",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                ),
                DataFile(
                    "t10k-labels-idx1-ubyte.gz",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                ),
            ),
        },
        reader=_read_idx_pair,
        source_help=(
            "They are the Fashion-MNIST files of Xiao, Rasul and Vollgraf 2017 "
            f"(http://{_FASHION_HOST}/), in the same idx format as MNIST."
        ),
        download_host=_FASHION_HOST,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        **_COLOUR_32,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        files={
            "train": (DataFile("cifar-10-binary.tar.gz", _CIFAR_SHA),),
            "test": (DataFile("cifar-10-binary.tar.gz", _CIFAR_SHA),),
        },
        reader=_read_cifar10_binary,
        source_help=(
            "It is the binary release of CIFAR-10 (Krizhevsky 2009), "
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz."
        ),
        download_host="www.cs.toronto.edu",
        augment="crop_flip",
    ),
    "svhn_cropped": DatasetInfo(
        name="svhn_cropped",
        **_COLOUR_32,
        class_names=tuple(str(i) for i in range(10)),
        files={
            "train": (
                DataFile(
                    "train_32x32.mat",
                    "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                ),
            ),
            "test": (
                DataFile(
                    "test_32x32.mat",
                    "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                ),
            ),
        },
        reader=_read_svhn_mat,
        source_help=(
            "They are the cropped-digit files of SVHN (Netzer et al. 2011), "
            "http://ufldl.stanford.edu/housenumbers/."
        ),
        download_host="ufldl.stanford.edu",
        # Crops only: a mirrored digit is often another digit or none.
        augment="crop",
    ),
    "imagenet2012": DatasetInfo(
        name="imagenet2012",
        image_shape=(224, 224, 3),
        num_classes=1000,
        class_names=(),  # the 1000 WordNet ids, read from tensorflow-datasets
        eps=4 / 255,
        model="resnet50",
        files={
            # Far too large to hash on every load; tensorflow-datasets reads them
            # once into its own prepared copy.
            "train": (DataFile("ILSVRC2012_img_train.tar", None),),
            "test": (DataFile("ILSVRC2012_img_val.tar", None),),
        },
        reader=None,
        source_help=(
            "ImageNet cannot be downloaded automatically: get the ILSVRC2012 "
            "training and validation tars from https://image-net.org/ (registration "
            "needed); tensorflow-datasets prepares them once (hours, ~150 GB)."
        ),
        download_host=None,
        augment="crop_flip",
        num_thresholds=15,
        streaming=True,
        tfds_splits={"train": "train", "test": "validation"},
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
    """The local dataset directory to read, as an absolute path.

    A relative directory is resolved against the current one, so that it
    names the same files when recorded or passed to a process that starts
    in another directory.

    Args:
        data_dir: A directory, absolute or relative; None for
            `$SQ_KERAS_DATA_DIR`.

    Returns:
        `data_dir`, else `$SQ_KERAS_DATA_DIR`, made absolute; None when
        neither is set (read tensorflow-datasets).
    """
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    return os.path.abspath(root) if root else None


def environment_for_subprocess(environ):
    """A copy of `environ` whose `$SQ_KERAS_DATA_DIR`, if set, is absolute.

    Pass it as the `env` of a process that may start in another directory,
    where a relative `$SQ_KERAS_DATA_DIR` would point nowhere.
    """
    env = dict(environ)
    if env.get(DATA_DIR_ENV):
        env[DATA_DIR_ENV] = os.path.abspath(env[DATA_DIR_ENV])
    return env


def split_slice(split):
    """`(base, start, stop)` of a split string; unsliced bounds are None.

    `"test[2500:5000]"` -> `("test", 2500, 5000)`, `"train[:1000]"` ->
    `("train", None, 1000)`, `"test"` -> `("test", None, None)`. Negative
    bounds count from the end, as in Python.

    Raises:
        ValueError: `split` is not a name optionally sliced like `train[:1000]`.
    """
    match = _SPLIT_RE.match(split) if isinstance(split, str) else None
    if not match:
        raise ValueError(
            f"Split {split!r} is not a split name optionally sliced like 'train[:1000]'."
        )
    start = int(match.group("start")) if match.group("start") else None
    stop = int(match.group("stop")) if match.group("stop") else None
    return match.group("base"), start, stop


def _parse_split(info, split):
    try:
        base, start, stop = split_slice(split)
    except ValueError:
        base = None
    if base not in info.files:
        raise ValueError(
            f"Unknown split {split!r} for {info.name}. Valid splits: "
            f"{', '.join(sorted(info.files))}, optionally sliced like 'train[:1000]'."
        )
    return base, slice(start, stop)


_SHA_CACHE = {}


def _sha256(path):
    """sha256 of a file, remembered per (path, size, mtime) within a process."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = _hash_file(path)
    return _SHA_CACHE[key]


def _hash_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_help(info):
    unique = {f.name: f.sha256 for fs in info.files.values() for f in fs}
    return "\n".join(
        f"  {name}  sha256 {sha}" if sha else f"  {name}" for name, sha in unique.items()
    )


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
        return info.reader(paths, base)
    except (OSError, EOFError, ValueError, tarfile.TarError) as e:
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
    if info.streaming:
        raise ValueError(f"{name} does not fit in memory: use load_stream().")
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


def load_stream(name, split, data_dir=None):
    """Streams a split too large for memory from a prepared tensorflow-datasets copy.

    The first call prepares the copy from the manually downloaded files in
    `<data_dir>/<name>/` (or `$SQ_KERAS_DATA_DIR/<name>/`, else tfds's own
    manual directory); tensorflow-datasets keeps it under `$TFDS_DATA_DIR`.

    Args:
        name: A registered streaming dataset (`imagenet2012`).
        split: "train" or "test", optionally sliced ("train[:1000]").
        data_dir: Directory whose `<name>/` holds the downloaded files.

    Returns:
        `(dataset, num_examples, class_names)`: a `tf.data.Dataset` of
        `(uint8 image [h, w, 3] of its own size, int64 label)`, the split's
        size (None when unknown) and the label names.

    Raises:
        ValueError: Unknown dataset or split.
        DataError: Not prepared and the downloaded files are missing.
    """
    import tensorflow_datasets as tfds

    info = get_info(name)
    base, index = _parse_split(info, split)
    builder = tfds.builder(info.name, data_dir=os.environ.get("TFDS_DATA_DIR"))
    if not builder.is_prepared():
        root = resolve_data_dir(data_dir)
        manual = os.path.join(root, info.name) if root else None
        missing = [
            f.name
            for fs in info.files.values()
            for f in fs
            if manual is None or not os.path.isfile(os.path.join(manual, f.name))
        ]
        if missing:
            raise DataError(
                f"{info.name} is not prepared in tensorflow-datasets ({builder.data_dir}) "
                f"and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in "
                f"{manual or '<data_dir>/' + info.name}.\nPut these files in "
                f"<data_dir>/{info.name}/ and pass --data_dir (or set {DATA_DIR_ENV}):\n"
                f"{_files_help(info)}\n{info.source_help}"
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual)
        )
    tfds_split = (info.tfds_splits or {}).get(base, base)
    if index.start is not None or index.stop is not None:
        start = "" if index.start is None else index.start
        stop = "" if index.stop is None else index.stop
        tfds_split = f"{tfds_split}[{start}:{stop}]"
    dataset = builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)
    try:
        num_examples = builder.info.splits[tfds_split].num_examples or None
    except (KeyError, ValueError):
        num_examples = None
    names = tuple(builder.info.features["label"].names)
    dataset = dataset.map(lambda x, y: (x, tf.cast(y, tf.int64)))
    return dataset, num_examples, names
