"""Capture a named module's output during forward, for models that are not keepmix models.

RecursiveMix needs the last feature map before global pooling. keepmix models return it from
``forward_features``; for any other ``nn.Module`` (a user's own net, a torchvision-style
ResNet whose last stage is ``"layer4"``), :class:`FeatureHook` records the output of the
named submodule while the ordinary ``forward`` runs, so logits and features come from one
pass::

    with FeatureHook(model, "layer4") as hook:
        logits = model(x)
    features = hook.features            # (B, C, h, w), still attached to the graph

    hook = FeatureHook(model, "layer4")  # or keep it attached across steps
    ...
    hook.remove()
"""

from __future__ import annotations

import difflib

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["FeatureHook"]


class FeatureHook:
    """Records the output of ``model``'s submodule ``module_name`` on every forward.

    The hook is attached on construction and removed by :meth:`remove` or on leaving a
    ``with`` block; :meth:`attach` attaches it again. ``features`` holds the output of the
    most recent call of the module (if the module runs several times in one forward, the
    last call wins). The tensor is kept as the module returned it, attached to the autograd
    graph unless ``detach=True``; an in-place op applied to it later in the forward (e.g. a
    following ``ReLU(inplace=True)``) changes it too, so hook a module whose output is not
    modified in place (a whole stage, not the BatchNorm inside it).

    Raises ``ValueError`` at construction if ``module_name`` (a dotted path as in
    ``model.named_modules()``) does not exist, listing the closest names.
    """

    def __init__(self, model: nn.Module, module_name: str, detach: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(module_name, str):
            raise TypeError(f"module_name must be a str (a name from model.named_modules()), got {type(module_name).__name__}")
        names = [name for name, _ in model.named_modules() if name]
        modules = dict(model.named_modules())
        if module_name not in modules or not module_name:
            close = difflib.get_close_matches(module_name, names, n=5, cutoff=0.4)
            hint = f"closest: {close}" if close else f"available (first 20): {names[:20]}"
            raise ValueError(f"module_name {module_name!r} is not a submodule of {type(model).__name__}; {hint}")
        self.module_name = module_name
        self.module: nn.Module = modules[module_name]
        self.detach = bool(detach)
        self._output: Tensor | None = None
        self._handle: RemovableHandle | None = None
        self.attach()

    def _hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"FeatureHook: module {self.module_name!r} returned {type(output).__name__}, not a Tensor; "
                "hook a module that returns the feature map"
            )
        self._output = output.detach() if self.detach else output

    def attach(self) -> FeatureHook:
        """Start recording (a no-op if already attached)."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def remove(self) -> None:
        """Stop recording; the last captured tensor stays readable until :meth:`clear`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def clear(self) -> None:
        """Drop the stored tensor (keeps the hook attached)."""
        self._output = None

    @property
    def attached(self) -> bool:
        """Whether the hook is currently recording."""
        return self._handle is not None

    @property
    def features(self) -> Tensor:
        """The output of the most recent call of the hooked module."""
        if self._output is None:
            state = "attached" if self.attached else "removed"
            raise RuntimeError(f"FeatureHook({self.module_name!r}) has captured nothing yet (hook {state}); run the model's forward first")
        return self._output

    def __enter__(self) -> FeatureHook:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureHook(module_name={self.module_name!r}, attached={self.attached}, detach={self.detach})"
