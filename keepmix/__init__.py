"""keepmix: information-preserving and mixing data augmentation for image classification."""

__version__ = "0.1.0"
