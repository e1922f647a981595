"""The registry of named data sets: `DATASETS`, one `DatasetSpec` each, naming its files
(checksums and download URLs), its reader, its image shape and the defaults a run takes.

References:
    LeCun et al. (1998), MNIST. Xiao et al. (2017), Fashion-MNIST.
    Larochelle & Murray (2011), the fixed binarization of MNIST.
    Kingma & Welling (2014), the Frey Face set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pyro_vae.data.pixels import PIXEL_LEVELS
from pyro_vae.data.readers import (
    DIGITS_LEVELS,
    MNIST_NUM_CLASSES,
    _read_amat_splits,
    _read_digits_splits,
    _read_frey_splits,
    _read_idx_splits,
)
from pyro_vae.data.splits import SPLITS, SplitLabels, Splits

DEFAULT_DATASET = "digits"
#: Epochs of a run that leaves ``epochs`` unset, where its data set names no other number.
DEFAULT_EPOCHS = 10


@dataclass(frozen=True)
class DataFile:
    """One accepted form of a data file: its name, the checksum of its bytes, where to fetch it.

    `checksum` is a hex md5 (32 digits) or sha256 (64 digits); `url` is None for a form that is
    accepted on disk but not downloaded.
    """

    filename: str
    checksum: str
    url: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, check and read one named data set."""

    name: str
    folder: str
    # role -> accepted forms of that file, in lookup order (the first form found wins).
    files: Mapping[str, tuple[DataFile, ...]]
    # The paths of the files found, by role -> the splits and their labels (None: no labels).
    reader: Callable[[Mapping[str, Path]], tuple[Splits, SplitLabels | None]]
    image_shape: tuple[int, int, int]
    default_binarize: str
    default_pair: str
    description: str
    # What the reader divides the stored levels by to reach [0, 1]; None for values kept as
    # stored (binarized MNIST's 0/1 bits).
    pixel_scale: float | None = None
    # Number of classes of the set's labels; None for a set without labels.
    num_classes: int | None = None
    # Roles in `files` that hold only labels: optional, the images load without them (and
    # then without labels); --download fetches them like the rest.
    label_roles: tuple[str, ...] = ()
    # What a run takes when it names no pair (so trains `default_pair`) and leaves these
    # unset: `epochs`, `kl_warmup` (SVI steps) and `pair_kwargs` (under the ones given).
    # A small set needs more epochs, fewer latent dimensions and a KL warm-up than MNIST
    # to learn more than the mean image. A run that names its pair takes DEFAULT_EPOCHS
    # and no warm-up.
    default_pair_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


IDX_LABEL_ROLES = ("train_labels", "test_labels")


def _idx_files(checksums: Mapping[str, str], base_url: str) -> dict[str, tuple[DataFile, ...]]:
    """The image and label files of an MNIST-style set, by role."""
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    return {
        role: (DataFile(name, checksums[role], f"{base_url}{name}"),)
        for role, name in names.items()
    }


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


def _amat_files() -> dict[str, tuple[DataFile, ...]]:
    """Binarized MNIST splits: our gzipped copies (md5) or the original text files (sha256)."""
    gz_md5 = {
        "train": "55c6be0db63f47a228822edc21049d6f",
        "valid": "bf325c5893052cb8b540dfeb3c0c6fbe",
        "test": "f7f18e7c5d551792f6aab10d62a7ea74",
    }
    amat_sha256 = {
        "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    }
    files = {}
    for split in SPLITS:
        name = f"binarized_mnist_{split}.amat"
        files[split] = (
            DataFile(f"{name}.gz", gz_md5[split]),
            DataFile(name, amat_sha256[split], f"{_BINARIZED_URL}{name}"),
        )
    return files


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="digits",
            folder="digits",
            files={},
            reader=_read_digits_splits,
            image_shape=(1, 8, 8),
            default_binarize="dynamic",
            default_pair="mlp",
            description="scikit-learn's 1797 handwritten 8x8 digits (ships with sklearn; offline)",
            pixel_scale=DIGITS_LEVELS,
            num_classes=10,
            # 300 epochs of 13 steps (batch 100 of 1297 points), the KL weight rising from 0
            # over the first 2000 steps, 16 latent dimensions: about half a minute on 2 cores;
            # 10 epochs with 50 dimensions end with the mean image (posterior collapse).
            default_pair_settings=MappingProxyType(
                {"epochs": 300, "kl_warmup": 2000, "pair_kwargs": {"z_dim": 16}}
            ),
        ),
        DatasetSpec(
            name="mnist",
            folder="mnist",
            files=_idx_files(
                {
                    "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "test_images": "9fb629c4189551a2d022fa330f9573f3",
                    "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
                    "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
                },
                _MNIST_URL,
            ),
            reader=_read_idx_splits,
            image_shape=(1, 28, 28),
            default_binarize="dynamic",
            default_pair="mlp",
            description="MNIST handwritten digits, 28x28 grey levels (LeCun et al. 1998)",
            pixel_scale=PIXEL_LEVELS,
            num_classes=MNIST_NUM_CLASSES,
            label_roles=IDX_LABEL_ROLES,
        ),
        DatasetSpec(
            name="fashion-mnist",
            folder="fashion_mnist",
            files=_idx_files(
                {
                    "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "test_images": "bef4ecab320f06d8554ea6380940ec79",
                    "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
                    "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
                },
                _FASHION_URL,
            ),
            reader=_read_idx_splits,
            image_shape=(1, 28, 28),
            default_binarize="dynamic",
            default_pair="mlp",
            description="Fashion-MNIST clothing images, 28x28 grey levels (Xiao et al. 2017)",
            pixel_scale=PIXEL_LEVELS,
            num_classes=MNIST_NUM_CLASSES,
            label_roles=IDX_LABEL_ROLES,
        ),
        DatasetSpec(
            name="binarized-mnist",
            folder="binarized_mnist",
            files=_amat_files(),
            reader=_read_amat_splits,
            image_shape=(1, 28, 28),
            default_binarize="none",
            default_pair="mlp",
            description="MNIST with the fixed binarization of Larochelle & Murray (2011)",
        ),
        DatasetSpec(
            name="frey-face",
            folder="frey_face",
            files={
                "faces": (
                    DataFile("frey_rawface.mat", "5aeb024d42b8a6091f30e5eb18c8a48d", _FREY_URL),
                )
            },
            reader=_read_frey_splits,
            image_shape=(1, 28, 20),
            default_binarize="none",
            default_pair="gaussian-mlp",
            description="Frey Face, 1965 video frames of one face, 28x20 (Kingma & Welling 2014)",
            pixel_scale=PIXEL_LEVELS,
        ),
    )
}
