"""CIFAR classification networks with the keepmix model interface.

Every model has ``forward(x)``, ``forward_features(x)`` (last feature map before pooling),
``classify(features)`` (average pool + ``fc``), ``num_classes``, ``feature_channels``,
``feature_stride`` and, when built with ``early_head=True``, ``early_logits(x)`` and
``forward_with_early(x)`` (see :class:`~keepmix.models.base.KeepmixModel`). For other
models, :class:`~keepmix.models.hooks.FeatureHook` captures a named module's output.

======================  ===================================  ==========  =====  ======
name                    model                                 params(10)  C      stride
======================  ===================================  ==========  =====  ======
``resnet18``            CIFAR ResNet-18                       11.17M      512    8
``preact_resnet18``     CIFAR PreAct-ResNet-18                11.17M      512    8
``resnet20``            ResNet-20, option A shortcuts         0.27M       64     4
``resnet56``            ResNet-56, option A shortcuts         0.85M       64     4
``resnet110``           ResNet-110, option A shortcuts        1.73M       64     4
``wrn28_10``            WideResNet-28-10                      36.48M      640    4
``wrn28_2``             WideResNet-28-2 (semi-supervised)     1.47M       128    4
``small``               airbench-like 7-conv net (CPU runs)   0.66M       192    8
``airbench94``          airbench94 widths (64, 256, 256)      1.97M       256    8 (*)
``airbench95``          airbench95 widths (128, 384, 384)     4.61M       384    8 (*)
``airbench96``          airbench96 (3 convs/group, residual)  12.72M      512    8 (*)
======================  ===================================  ==========  =====  ======

(*) the airbench nets' valid 2 x 2 stem and floor pooling give features of side ``(s - 1) // 8``
(3 x 3 for 32 px; see :mod:`keepmix.models.airbench`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from keepmix.models.airbench import AirbenchNet, airbench94, airbench95, airbench96
from keepmix.models.base import KeepmixModel, count_parameters, init_weights
from keepmix.models.early_head import EarlyHead
from keepmix.models.hooks import FeatureHook
from keepmix.models.resnet import PreActResNet18, ResNet18
from keepmix.models.resnet_cifar import CifarResNet, resnet20, resnet56, resnet110
from keepmix.models.small import SmallConvNet
from keepmix.models.wrn import WideResNet, wrn28_2, wrn28_10

__all__ = [
    "MODELS",
    "build_model",
    "list_models",
    "KeepmixModel",
    "EarlyHead",
    "FeatureHook",
    "ResNet18",
    "PreActResNet18",
    "CifarResNet",
    "WideResNet",
    "SmallConvNet",
    "AirbenchNet",
    "airbench94",
    "airbench95",
    "airbench96",
    "resnet20",
    "resnet56",
    "resnet110",
    "wrn28_10",
    "wrn28_2",
    "count_parameters",
    "init_weights",
]

#: Model name -> constructor ``(num_classes, early_head, **kwargs) -> KeepmixModel``.
MODELS: dict[str, Callable[..., KeepmixModel]] = {
    "resnet18": ResNet18,
    "preact_resnet18": PreActResNet18,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "wrn28_10": wrn28_10,
    "wrn28_2": wrn28_2,
    "small": SmallConvNet,
    "airbench94": airbench94,
    "airbench95": airbench95,
    "airbench96": airbench96,
}


def list_models() -> list[str]:
    """The names :func:`build_model` accepts, sorted."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int = 10, early_head: bool = False, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` (see :data:`MODELS`).

    ``kwargs`` go to the model's constructor, e.g. ``dropout=0.3`` for ``wrn28_10``,
    ``shortcut="B"`` for the CIFAR ResNets, ``early_stage`` / ``early_grid`` for where and
    how wide the early head is, ``in_channels`` for non-RGB input.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    return MODELS[name](num_classes=num_classes, early_head=early_head, **kwargs)
