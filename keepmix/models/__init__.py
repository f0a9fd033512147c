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

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from keepmix.models.base import KeepmixModel

# The networks load on first use (PEP 562): an op that only needs FeatureHook (Attentive CutMix,
# RecursiveMix) imports keepmix.models.hooks without building every architecture's module.
_WHERE = {
    "KeepmixModel": "base",
    "count_parameters": "base",
    "init_weights": "base",
    "EarlyHead": "early_head",
    "FeatureHook": "hooks",
    "tokens_to_map": "hooks",
    "ResNet18": "resnet",
    "PreActResNet18": "resnet",
    "CifarResNet": "resnet_cifar",
    "resnet20": "resnet_cifar",
    "resnet56": "resnet_cifar",
    "resnet110": "resnet_cifar",
    "WideResNet": "wrn",
    "wrn28_10": "wrn",
    "wrn28_2": "wrn",
    "SmallConvNet": "small",
    "AirbenchNet": "airbench",
    "airbench94": "airbench",
    "airbench95": "airbench",
    "airbench96": "airbench",
}
#: Model name -> the constructor's name in this package (see :data:`MODELS`).
_NAMES = {
    "resnet18": "ResNet18",
    "preact_resnet18": "PreActResNet18",
    "resnet20": "resnet20",
    "resnet56": "resnet56",
    "resnet110": "resnet110",
    "wrn28_10": "wrn28_10",
    "wrn28_2": "wrn28_2",
    "small": "SmallConvNet",
    "airbench94": "airbench94",
    "airbench95": "airbench95",
    "airbench96": "airbench96",
}

__all__ = ["MODELS", "build_model", "list_models", *_WHERE]


def __getattr__(name: str) -> Any:
    """``MODELS`` (model name -> constructor ``(num_classes, early_head, **kwargs) -> KeepmixModel``)
    and the model classes, imported on first use."""
    if name == "MODELS":
        value: Any = {k: __getattr__(v) for k, v in _NAMES.items()}
    elif name in _WHERE:
        value = getattr(importlib.import_module(f"keepmix.models.{_WHERE[name]}"), name)
    else:
        raise AttributeError(f"module 'keepmix.models' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def list_models() -> list[str]:
    """The names :func:`build_model` accepts, sorted."""
    return sorted(_NAMES)


def build_model(name: str, num_classes: int = 10, early_head: bool = False, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (see ``MODELS``).

    ``kwargs`` go to the model's constructor, e.g. ``dropout=0.3`` for ``wrn28_10``,
    ``shortcut="B"`` for the CIFAR ResNets, ``early_stage`` / ``early_grid`` for where and
    how wide the early head is, ``in_channels`` for non-RGB input.
    """
    if not isinstance(name, str) or name not in _NAMES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    make: Callable[..., KeepmixModel] = __getattr__(_NAMES[name])
    return make(num_classes=num_classes, early_head=early_head, **kwargs)
