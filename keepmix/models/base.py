"""The interface every keepmix model exposes: features, classifier, optional early head.

A keepmix model is a stem, a list of stages, an optional final normalisation (for
pre-activation networks, whose stage outputs are not yet normalised) and a linear classifier
``fc`` behind a global average pool::

    forward_features(x) = norm(stages(stem(x)))          # (B, C, h, w)
    classify(f)         = fc(mean over h, w of f)        # (B, num_classes)
    forward(x)          = classify(forward_features(x))

The early head (KeepAugment's early-loss approximation) sits behind stage ``early_stage``
(1 = after the first stage, the paper's choice: the saliency backward then crosses only the
stem and one stage, which is what makes it cheap), or, with ``early_block=j``, behind the
first ``j`` blocks of that stage (cheaper still: for CIFAR ResNet-18, stem + stage 1 is a
quarter of the forward FLOPs and stem + its first block about 15%).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn

from keepmix._checks import check_int
from keepmix.models.early_head import EarlyHead

__all__ = ["KeepmixModel", "init_weights", "count_parameters"]


def init_weights(module: nn.Module) -> None:
    """Initialise as in the ResNet / WRN papers.

    Convolutions: Kaiming (He) normal for ReLU, ``fan_out`` mode (torchvision's and the WRN
    reference code's choice; He et al. show fan-in and fan-out both keep the signal scale).
    BatchNorm: weight 1, bias 0. Linear: PyTorch's default uniform weight, bias 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class KeepmixModel(nn.Module):
    """Base class: features, classifier and optional early head on top of stem + stages.

    Subclasses build their layers and then call :meth:`_setup`. Attributes every model has:

    * ``num_classes``: K, the logits' width;
    * ``feature_channels``: C of :meth:`forward_features`;
    * ``feature_stride``: image side / feature side for sides divisible by it (the features of
      a side ``s`` image have side ``ceil(s / feature_stride)``: every downsampling rounds up);
    * ``has_early_head``: whether :meth:`early_logits` is available;
    * ``fc``: the final ``nn.Linear`` (RecursiveMix may share it as its RoI head);
    * the layout ``stem``, ``stages`` (an ``nn.ModuleList``), ``norm`` (final BN + ReLU of
      pre-activation nets, else ``Identity``), ``early_stage`` (how many stages precede the
      early head) and ``early_head`` (an :class:`EarlyHead` or ``None``); FeatureHook names
      such as ``"stages.0"`` or ``"norm"`` follow it.
    """

    num_classes: int
    feature_channels: int
    feature_stride: int
    has_early_head: bool
    in_channels: int

    def _setup(
        self,
        *,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        stage_channels: Sequence[int],
        stride: int,
        norm: nn.Module | None,
        num_classes: int,
        in_channels: int,
        early_head: bool,
        early_stage: int,
        early_grid: int,
        early_preact: bool,
        early_block: int | None = None,
    ) -> None:
        """Register the layers, the classifier and the early head, then initialise weights."""
        check_int(num_classes, "num_classes", low=1)
        check_int(in_channels, "in_channels", low=1)
        check_int(early_grid, "early_grid", low=1)  # checked even without a head: a typo is a bug
        if not isinstance(early_head, bool):
            raise TypeError(f"early_head must be a bool, got {type(early_head).__name__}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.norm = norm if norm is not None else nn.Identity()
        self.feature_channels = int(stage_channels[-1])
        self.feature_stride = int(stride)
        self.fc = nn.Linear(self.feature_channels, num_classes)
        self.has_early_head = early_head
        n = len(self.stages)
        check_int(early_stage, "early_stage", 1, n - 1, f"an int in [1, {n - 1}] (the number of stages before the early head)")
        self.early_stage = early_stage
        stage = self.stages[early_stage - 1]
        if early_block is not None:
            if type(stage) is not nn.Sequential:  # a plain sequence of blocks (not a block that subclasses it)
                raise ValueError(
                    f"early_block needs stage {early_stage} to be a sequence of blocks; "
                    f"{type(self).__name__}'s is one block (use early_block=None)"
                )
            check_int(
                early_block,
                "early_block",
                1,
                len(stage),
                f"an int in [1, {len(stage)}] (blocks of stage {early_stage} before the head) or None",
            )
            if early_block == len(stage):
                early_block = None  # the whole stage: the same as no block index
        self.early_block = early_block
        self.early_head = (
            EarlyHead(int(stage_channels[early_stage - 1]), num_classes, grid=early_grid, preact=early_preact) if early_head else None
        )
        init_weights(self)

    # ----------------------------------------------------------------- main path
    def _check_input(self, x: Tensor) -> None:
        # Shape-only checks: no device sync, safe under autocast / compile.
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, {self.in_channels}, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor (normalise uint8 images first), got {x.dtype}")

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map before global pooling, (B, feature_channels, h, w)."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def classify(self, features: Tensor) -> Tensor:
        """Global average pool + ``fc``: (B, C, h, w) features (any h, w >= 1) -> (B, K) logits."""
        if features.ndim != 4 or features.shape[1] != self.feature_channels:
            raise ValueError(f"features must have shape (B, {self.feature_channels}, h, w), got {tuple(features.shape)}")
        return self.fc(features.mean(dim=(-2, -1)))

    def forward(self, x: Tensor, with_early: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes); with ``with_early=True``, :meth:`forward_with_early`.

        The flag lets wrappers that only route ``__call__`` (DistributedDataParallel,
        ``torch.compile`` of the module) reach the early head in the same pass.
        """
        if with_early:
            return self.forward_with_early(x)
        return self.classify(self.forward_features(x))

    # ---------------------------------------------------------------- early head
    def _require_early_head(self) -> EarlyHead:
        if self.early_head is None:
            raise RuntimeError(
                f"{type(self).__name__} was built without an early head; build it with early_head=True "
                "(e.g. build_model(name, early_head=True)) to use early_logits / forward_with_early"
            )
        return self.early_head

    def _early_split(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The modules before the early head and those after it, up to the last stage."""
        k, j = self.early_stage, self.early_block
        before: list[nn.Module] = [self.stem, *self.stages[: k - 1]]
        after: list[nn.Module] = list(self.stages[k:])
        stage = self.stages[k - 1]
        if j is None:
            before.append(stage)
        else:
            # __init__ accepts an early_block only when this stage is an nn.Sequential.
            blocks: list[nn.Module] = list(cast(nn.Sequential, stage))
            before.extend(blocks[:j])
            after[:0] = blocks[j:]
        return before, after

    def early_logits(self, x: Tensor) -> Tensor:
        """Logits of the early head, running only the stem and the first ``early_stage`` stages
        (the first ``early_block`` blocks of the last of them when set).

        A saliency backward through this output stops at the stem: the later stages are
        never run.
        """
        head = self._require_early_head()
        self._check_input(x)
        for module in self._early_split()[0]:
            x = module(x)
        return head(x)

    def forward_features_with_early(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features, early_logits)`` in one pass: for losses that need the feature map
        (RecursiveMix's consistency loss) and the early head at once."""
        head = self._require_early_head()
        self._check_input(x)
        before, after = self._early_split()
        for module in before:
            x = module(x)
        early = head(x)
        for module in after:
            x = module(x)
        return self.norm(x), early

    def forward_with_early(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, early_logits)`` in one pass (for training with the early loss)."""
        features, early = self.forward_features_with_early(x)
        return self.classify(features), early

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feature_channels={self.feature_channels}, "
            f"feature_stride={self.feature_stride}, early_head={self.has_early_head}"
        )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
