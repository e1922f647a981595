"""Data sets: the registry of named sets, their readers and checks, downloads and the
splits a run trains and evaluates on."""

from pyro_vae.data.arrays import ARRAY_SUFFIXES
from pyro_vae.data.batches import minibatches
from pyro_vae.data.checks import file_checksum
from pyro_vae.data.dataset import Dataset
from pyro_vae.data.download import download_file
from pyro_vae.data.errors import DataError, logger
from pyro_vae.data.loading import load_dataset
from pyro_vae.data.pixels import BINARIZATIONS, PIXEL_LEVELS, PIXEL_SCALES, binarize_static
from pyro_vae.data.readers import (
    DIGITS_LEVELS,
    DIGITS_NUM_TRAIN,
    DIGITS_NUM_VALID,
    FREY_IMAGE_SIZE,
    FREY_NUM_TEST,
    FREY_NUM_VALID,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST_NUM_CLASSES,
    MNIST_NUM_VALID,
    read_amat,
    read_frey_mat,
    read_idx_images,
    read_idx_labels,
)
from pyro_vae.data.registry import (
    DATASETS,
    DEFAULT_DATASET,
    IDX_LABEL_ROLES,
    DataFile,
    DatasetSpec,
)
from pyro_vae.data.roots import cache_dir, search_roots
from pyro_vae.data.splits import SPLITS, SplitLabels, Splits

__all__ = [
    "ARRAY_SUFFIXES",
    "BINARIZATIONS",
    "DATASETS",
    "DEFAULT_DATASET",
    "DIGITS_LEVELS",
    "DIGITS_NUM_TRAIN",
    "DIGITS_NUM_VALID",
    "DataError",
    "DataFile",
    "Dataset",
    "DatasetSpec",
    "FREY_IMAGE_SIZE",
    "FREY_NUM_TEST",
    "FREY_NUM_VALID",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IDX_LABEL_ROLES",
    "MNIST_NUM_CLASSES",
    "MNIST_NUM_VALID",
    "PIXEL_LEVELS",
    "PIXEL_SCALES",
    "SPLITS",
    "SplitLabels",
    "Splits",
    "binarize_static",
    "cache_dir",
    "download_file",
    "file_checksum",
    "load_dataset",
    "logger",
    "minibatches",
    "read_amat",
    "read_frey_mat",
    "read_idx_images",
    "read_idx_labels",
    "search_roots",
]
