"""Datasets as uint8 tensors and an on-device batched loader.

* :func:`load_cifar`: CIFAR-10/100 in the official python format (download + md5 check).
* :func:`load_image_folder`: an ImageFolder tree or its .tar.gz, decoded once and cached.
* :class:`ImageFolderDataset`: the lazy alternative for sets too large for memory.
* :func:`get_dataset`: a name or a path to ``(train, test)``.
* :class:`DeviceLoader`: the whole dataset on the device, crop + flip + normalise per image.
* :func:`class_balanced_subset`: seeded, class-balanced subsets for quick runs.
"""

from keepmix.data.archives import ChecksumError, UnsafeArchiveError, download_url, file_md5, safe_extract
from keepmix.data.cache import default_cache_dir
from keepmix.data.cifar import CIFAR_SOURCES, load_cifar
from keepmix.data.image_folder import ImageFolderDataset, decode_image, load_image_folder
from keepmix.data.loader import DeviceLoader, EpochPlan
from keepmix.data.registry import DATASET_NAMES, default_data_root, get_dataset, normalization_stats
from keepmix.data.split import DataError, Split
from keepmix.data.stats import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, channel_stats
from keepmix.data.subset import class_balanced_subset
from keepmix.data.transforms import crop_flip, normalize, random_crop_flip, sample_crop_flip

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_SOURCES",
    "DATASET_NAMES",
    "ChecksumError",
    "DataError",
    "DeviceLoader",
    "EpochPlan",
    "ImageFolderDataset",
    "Split",
    "UnsafeArchiveError",
    "channel_stats",
    "class_balanced_subset",
    "crop_flip",
    "decode_image",
    "default_cache_dir",
    "default_data_root",
    "download_url",
    "file_md5",
    "get_dataset",
    "load_cifar",
    "load_image_folder",
    "normalization_stats",
    "normalize",
    "random_crop_flip",
    "safe_extract",
    "sample_crop_flip",
]
