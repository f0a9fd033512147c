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

A vision transformer's blocks return tokens, (B, N, C) with class / register tokens first;
:func:`tokens_to_map` drops those and lays the patch tokens out as the (B, C, h, w) map a
CNN's last stage gives, and :class:`FeatureHook` does it for a module that returns tokens
(timm ViTs: hook ``"norm"``; torchvision's ``VisionTransformer``: hook ``"encoder"``).
"""

from __future__ import annotations

import difflib
import math

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["FeatureHook", "tokens_to_map"]


def tokens_to_map(
    tokens: Tensor,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> Tensor:
    """A ViT's token output (B, N, C) as a (B, C, h, w) feature map: the first
    ``num_prefix_tokens`` tokens (the class token, and any register tokens: timm's
    ``model.num_prefix_tokens``) are dropped and the remaining ``h * w`` patch tokens, in
    row-major order, are laid out on the patch grid.

    ``grid`` (h, w) is the patch grid; None infers it: square when ``image_size`` is None,
    else with the aspect ratio of ``image_size`` (H, W) (``h / w = H / W``, ``h * w`` tokens).
    A (B, C, h, w) tensor is returned unchanged. The result is a view (no copy), attached to
    the graph as ``tokens`` is.
    """
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a Tensor, got {type(tokens).__name__}")
    if tokens.ndim == 4:
        return tokens
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, C) tokens (or a (B, C, h, w) map), got shape {tuple(tokens.shape)}")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    b, n, c = tokens.shape
    patches = n - num_prefix_tokens
    if patches < 1:
        raise ValueError(f"tokens has {n} tokens, none left after num_prefix_tokens={num_prefix_tokens}")
    if grid is None:
        if image_size is None:
            grid = (math.isqrt(patches), math.isqrt(patches))
        else:
            h = max(1, round(math.sqrt(patches * image_size[0] / image_size[1])))
            grid = (h, patches // h)
    h, w = (int(v) for v in grid)
    if h * w != patches:
        where = "a square grid" if image_size is None else f"the aspect ratio of a {image_size[0]}x{image_size[1]} image"
        raise ValueError(
            f"tokens: {patches} patch tokens (after num_prefix_tokens={num_prefix_tokens}) do not fill {where} "
            f"({h}x{w}); pass grid=(h, w) or the right num_prefix_tokens"
        )
    return tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(b, c, h, w)


class FeatureHook:
    """Records the output of ``model``'s submodule ``module_name`` on every forward.

    The hook is attached on construction and removed by :meth:`remove` or on leaving a
    ``with`` block; :meth:`attach` attaches it again. ``features`` holds the output of the
    most recent call of the module (if the module runs several times in one forward, the
    last call wins). The tensor is kept as the module returned it, attached to the autograd
    graph unless ``detach=True``; an in-place op applied to it later in the forward (e.g. a
    following ``ReLU(inplace=True)``) changes it too, so hook a module whose output is not
    modified in place (a whole stage, not the BatchNorm inside it).

    A module that returns ViT tokens (B, N, C) gives its map (B, C, h, w) (see
    :func:`tokens_to_map`): ``num_prefix_tokens`` defaults to the model's own
    ``num_prefix_tokens`` (timm) or 1 (a class token, as torchvision's ViT), and the grid is
    read from the aspect ratio of the model's input of the same forward. ``tokens=False``
    keeps the module's output as it is.

    Raises ``ValueError`` at construction if ``module_name`` (a dotted path as in
    ``model.named_modules()``) does not exist, listing the closest names.
    """

    def __init__(
        self, model: nn.Module, module_name: str, detach: bool = False, tokens: bool = True, num_prefix_tokens: int | None = None
    ) -> None:
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
        if not isinstance(tokens, bool):
            raise TypeError(f"tokens must be a bool, got {tokens!r}")
        self.tokens = tokens
        if num_prefix_tokens is None:
            num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.num_prefix_tokens = num_prefix_tokens
        self.model = model
        self._image_size: tuple[int, int] | None = None
        self._output: Tensor | None = None
        self._handle: RemovableHandle | None = None
        self._input_handle: RemovableHandle | None = None
        self.attach()

    def _input_hook(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0] if inputs else None
        self._image_size = (int(x.shape[-2]), int(x.shape[-1])) if isinstance(x, Tensor) and x.ndim == 4 else None

    def _hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"FeatureHook: module {self.module_name!r} returned {type(output).__name__}, not a Tensor; "
                "hook a module that returns the feature map"
            )
        if self.tokens and output.ndim == 3:
            output = tokens_to_map(output, self.num_prefix_tokens, image_size=self._image_size)
        self._output = output.detach() if self.detach else output

    def attach(self) -> FeatureHook:
        """Start recording (a no-op if already attached)."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
            self._input_handle = self.model.register_forward_pre_hook(self._input_hook)
        return self

    def remove(self) -> None:
        """Stop recording; the last captured tensor stays readable until :meth:`clear`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._input_handle is not None:
            self._input_handle.remove()
            self._input_handle = None

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
