"""Unsupervised data augmentation (UDA, Xie et al. 2019) for ``keepmix train``: KeepAugment section 4.3.

Semi-supervised training (``semi_labels > 0``): the training set is split into a labelled
subset and an unlabelled pool (:func:`keepmix.data.semi.semi_split`); each step takes a
labelled batch of ``batch_size`` (the loop's loader) and an unlabelled batch ``semi_mu`` times
larger (:class:`keepmix.data.semi.UnlabelledStream`), and minimises::

    loss = TSA-masked CE(labelled)  +  uda_weight * mean_u[ mask_u * KL(sharpen(p(y | x_u)) || p(y | A(x_u))) ]

* **Training-signal annealing** (:func:`tsa_threshold`, :func:`tsa_mask`,
  :func:`tsa_cross_entropy`): at training progress ``t = step / total steps`` the threshold is
  ``eta_t = alpha_t (1 - 1/K) + 1/K``, rising from ``1/K`` to 1 with ``alpha_t = t`` (linear),
  ``1 - exp(-5 t)`` (log) or ``exp(5 (t - 1))`` (exp); a labelled example whose correct-class
  probability exceeds ``eta_t`` is left out of the cross-entropy, which is averaged over the
  examples kept (at least 1). ``none``: ``eta_t = 1``, every example counts.
* **Consistency** (:func:`consistency_loss`): the target is ``softmax(logits(x) / T)`` of the
  un-augmented view, without gradient (``T`` = ``uda_temperature`` sharpens it); the
  prediction ``log_softmax(logits(A(x)))``; the KL per unlabelled example is multiplied by
  the confidence mask ``max softmax(logits(x)) > uda_threshold`` (:func:`confidence_mask`,
  at temperature 1, as UDA's code) and averaged over the whole unlabelled batch.
* **A** is RandAugment (``uda_augment=randaugment``) or KeepRandAugment
  (``keeprandaugment``), whose kept region comes from the saliency of the *maximum logit* of
  the unlabelled image it augments (:func:`augment_unlabelled`: the saliency function is
  called with the images only; it never sees a label). ``saliency`` (full / lowres / early /
  lowres+early / uniform) picks how the map is computed, as for the supervised Keep methods.

The labelled rows, the clean unlabelled view and the augmented view go through the model in
one forward pass in training mode (so BatchNorm sees all three, as in UDA's code); the
labelled rows can take a label-preserving supervised method (``method``, ``none`` in the
paper's set-up: crop + flip only).

Defaults (``TrainConfig``) and their source, google-research/uda ``image/``:
``scripts/run_cifar10_gpu.sh`` at commit 602483d (Jan 2020, the CIFAR-10 GPU recipe whose
comment reports 95.11 +- 0.19 at 4,000 labels, the number KeepAugment's UDA + RandAugment row
gives as 95.1 +- 0.2): ``unsup_ratio`` 5 (``semi_mu``), ``uda_softmax_temp`` 0.4
(``uda_temperature``), ``uda_confidence_thresh`` 0.8 (``uda_threshold``), no ``tsa`` flag
(``main.py``'s default ``""``: no annealing; ``uda_tsa=none``), ``unsup_coeff`` 1
(``uda_weight``), batch 64, 500k steps, no warm-up; ``main.py``: lr 0.03, Nesterov momentum
0.9, weight decay 5e-4, cosine decay to 0.004 x lr, TSA threshold from ``1/K`` to 1 with the
linear / log / exp schedules above (scale 5). The TPU script (``run_cifar10_tpu_32_core.sh``)
uses ``unsup_ratio`` 30 and ``tsa=linear_schedule`` instead; the later GPU script (HEAD,
Feb 2020, 95.68 +- 0.08) ``unsup_ratio`` 7 and an EMA of the weights, neither of which is
here.

Known differences from UDA's pipeline: UDA's RandAugment draws 2 of 15 ops, each applied with
probability 0.5 at a magnitude drawn in 1..9 (of 10), then applies Cutout 16; keepmix's
:class:`~keepmix.policies.RandAugment` applies ``randaugment_n`` ops at the fixed magnitude
``randaugment_m`` (the RandAugment paper's form), without the Cutout. UDA pre-computes 100
augmented copies per image offline; here A is drawn afresh every step. The unlabelled pool is
the training images *without* the labelled ones (UDA uses the whole training set).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from keepmix.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from keepmix.train.data import TrainData
    from keepmix.train.methods import StepBatch
    from keepmix.train.steps import StepContext

__all__ = [
    "TSA_SCHEDULES",
    "tsa_threshold",
    "tsa_mask",
    "tsa_cross_entropy",
    "sharpen",
    "confidence_mask",
    "consistency_loss",
    "UDALoss",
    "uda_loss",
    "build_uda_augment",
    "augment_unlabelled",
    "split_semi_data",
    "UDAStep",
]

#: The training-signal annealing schedules (``uda_tsa``).
TSA_SCHEDULES = ("none", "linear", "log", "exp")


# ----------------------------------------------------------------------------- the loss pieces
def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """TSA's threshold ``eta_t = alpha_t * (1 - 1/K) + 1/K`` at training progress ``t`` in [0, 1].

    ``alpha_t``: ``t`` (linear), ``1 - exp(-5 t)`` (log: fast early), ``exp(5 (t - 1))`` (exp:
    slow early); ``none`` returns 1 (no annealing). ``progress`` is clipped to [0, 1].
    E.g. K = 10, t = 0.5: linear 0.55, log 0.92612, exp 0.17388.
    """
    if schedule not in TSA_SCHEDULES:
        raise ValueError(f"uda_tsa must be one of {', '.join(TSA_SCHEDULES)}; got {schedule!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if schedule == "none":
        return 1.0
    t = min(max(float(progress), 0.0), 1.0)
    alpha = {"linear": t, "log": 1.0 - math.exp(-5.0 * t), "exp": math.exp(5.0 * (t - 1.0))}[schedule]
    start = 1.0 / num_classes
    return alpha * (1.0 - start) + start


@torch.no_grad()
def tsa_mask(logits: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """(B,) float32: 1 where the softmax probability of the correct class is at most
    ``threshold`` (the example trains), 0 where it exceeds it (left out). No gradient."""
    p = logits.float().softmax(dim=1).gather(1, labels.long()[:, None])[:, 0]
    return (p <= threshold).float()


def tsa_cross_entropy(logits: Tensor, labels: Tensor, threshold: float, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """``(loss, mask)``: the cross-entropy of the examples :func:`tsa_mask` keeps, summed and
    divided by ``max(kept, 1)`` (UDA's ``anneal_sup_loss``). ``threshold = 1`` is the plain mean."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)
    mask = tsa_mask(logits, labels, threshold)
    return (ce * mask).sum() / mask.sum().clamp_min(1.0), mask


@torch.no_grad()
def sharpen(logits: Tensor, temperature: float) -> Tensor:
    """The consistency target ``softmax(logits / T)`` (float32, no gradient); T < 1 sharpens."""
    if not temperature > 0:
        raise ValueError(f"uda_temperature must be > 0, got {temperature!r}")
    return (logits.float() / temperature).softmax(dim=1)


@torch.no_grad()
def confidence_mask(logits: Tensor, threshold: float) -> Tensor:
    """(B,) float32: 1 where ``max softmax(logits)`` (temperature 1) is strictly above ``threshold``.
    ``threshold = 0`` keeps every example."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"uda_threshold must be in [0, 1], got {threshold!r}")
    return (logits.float().softmax(dim=1).amax(dim=1) > threshold).float()


def consistency_loss(clean_logits: Tensor, aug_logits: Tensor, temperature: float = 0.4, threshold: float = 0.8) -> tuple[Tensor, Tensor]:
    """``(loss, mask)``: ``mean over the batch of mask * KL(sharpen(clean) || softmax(aug))``.

    The target (``clean_logits`` at temperature ``temperature``) carries no gradient; the KL
    is taken in log space (``p * (log p - log q)`` with ``log p`` from ``log_softmax``), so a
    target probability that underflows to 0 adds 0, not NaN. Averaged over all rows (masked
    rows count as 0, as in UDA's code).
    """
    if clean_logits.shape != aug_logits.shape or clean_logits.ndim != 2:
        raise ValueError(f"clean and augmented logits must both be (B, K), got {tuple(clean_logits.shape)} and {tuple(aug_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"uda_temperature must be > 0, got {temperature!r}")
    with torch.no_grad():
        log_p = (clean_logits.detach().float() / temperature).log_softmax(dim=1)
        p = log_p.exp()
    kl = (p * (log_p - aug_logits.float().log_softmax(dim=1))).sum(dim=1)
    mask = confidence_mask(clean_logits.detach(), threshold)
    return (kl * mask).mean(), mask


@dataclass
class UDALoss:
    """The step's total loss and its parts (``sup_mask``: TSA's kept labelled examples,
    ``conf_mask``: the unlabelled examples the consistency term counts)."""

    total: Tensor
    sup: Tensor
    unsup: Tensor
    sup_mask: Tensor
    conf_mask: Tensor


def uda_loss(
    sup_logits: Tensor,
    labels: Tensor,
    clean_logits: Tensor,
    aug_logits: Tensor,
    *,
    tsa: float = 1.0,
    temperature: float = 0.4,
    threshold: float = 0.8,
    weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> UDALoss:
    """``TSA-CE(sup_logits, labels) + weight * consistency(clean_logits, aug_logits)``;
    ``tsa`` is the threshold of :func:`tsa_threshold` at this step."""
    sup, sup_mask = tsa_cross_entropy(sup_logits, labels, tsa, label_smoothing)
    unsup, conf_mask = consistency_loss(clean_logits, aug_logits, temperature, threshold)
    return UDALoss(sup + weight * unsup, sup, unsup, sup_mask, conf_mask)


# ----------------------------------------------------------------------------- A, label-free
def build_uda_augment(config: TrainConfig, model: torch.nn.Module, autocast: Callable | None = None):
    """``(op, saliency_fn)``: UDA's A from the config, built by its registry entry
    (:data:`keepmix.train.registry.UDA_AUGMENTS`): RandAugment, or KeepRandAugment with
    ``saliency_fn`` a :class:`keepmix.saliency.Saliency` of the maximum logit (None for an
    entry without saliency). ``saliency`` with ``early`` needs a model built with its early head."""
    from keepmix.train.methods import build_saliency
    from keepmix.train.registry import UDA_AUGMENTS, BuildContext

    entry = UDA_AUGMENTS[config.uda_augment]
    assert entry.build_op is not None  # every UDA entry has an op
    op = entry.build_op(BuildContext(config, model, 0))
    if not entry.saliency:
        return op, None
    if "early" in config.saliency and not getattr(model, "has_early_head", False):
        raise ConfigError(
            f"saliency={config.saliency!r} (uda_augment={config.uda_augment}) takes the saliency through the "
            f"early head, but the model {type(model).__name__} has none: set early_head=true"
        )
    return op, build_saliency(config, model, autocast)


def augment_unlabelled(
    op, images: Tensor, normalize: Callable[[Tensor], Tensor], saliency_fn: Callable | None, generator: torch.Generator | None
) -> Tensor:
    """``normalize(A(images))`` for a uint8 unlabelled batch.

    With ``saliency_fn`` (KeepRandAugment), the map is ``saliency_fn(normalize(images))``:
    called with the images alone, so a :class:`~keepmix.saliency.Saliency` takes the maximum
    logit of each image; no label exists here to pass.
    """
    if saliency_fn is None:
        out = op(images, generator=generator)
    else:
        sal = saliency_fn(normalize(images))
        out = op(images, None, saliency=sal, generator=generator)
    return normalize(out) if out.dtype == torch.uint8 else out


# ----------------------------------------------------------------------------- data and the step
def split_semi_data(data: TrainData, config: TrainConfig) -> tuple[TrainData, Tensor]:
    """``(data with train = the labelled subset, unlabelled uint8 images)`` for ``semi_labels``.

    The split depends on ``config.seed`` (and the training labels) only; the normalisation
    constants stay those of the whole training set.
    """
    from keepmix.data.semi import semi_split

    train = data.train
    try:
        labelled, unlabelled = semi_split(train.labels, config.semi_labels, config.seed, balanced=config.semi_balanced)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return dataclasses.replace(data, train=train.subset(labelled)), train.images[unlabelled]


class UDAStep:
    """The semi-supervised step strategy (``semi_labels > 0``; :mod:`keepmix.train.steps`).

    Holds the unlabelled stream (its position and the epoch's UDA statistics are its state,
    saved in every checkpoint) and A; :meth:`forward_loss` is the step's forward and loss,
    the loop does the backward and the update. It reads of the run only its
    :class:`~keepmix.train.steps.StepContext`.
    """

    def __init__(self, ctx: StepContext, unlabelled: Tensor, model: torch.nn.Module) -> None:
        from keepmix.data.semi import UnlabelledStream

        cfg = ctx.config
        if ctx.method.adds_loss or (ctx.method.op is not None and ctx.method.op.mixes_labels):
            raise ConfigError(
                f"method={cfg.method!r} cannot train the labelled batch of a semi-supervised run (it mixes "
                "labels or adds its own loss): use a label-preserving method (none, the paper's set-up)"
            )
        try:
            self.stream = UnlabelledStream(
                unlabelled,
                cfg.semi_mu * cfg.batch_size,
                seed=cfg.seed * 7 + 1,
                crop_padding=cfg.crop_padding,
                flip=cfg.flip,
                device=ctx.device,
                rank=ctx.dist.rank,
                world_size=ctx.dist.world_size,
            )
        except ValueError as e:
            raise ConfigError(f"semi_labels={cfg.semi_labels}, semi_mu={cfg.semi_mu}: {e}") from None
        self.dist = ctx.dist
        self.op, self.saliency = build_uda_augment(cfg, model, ctx.autocast)
        self.op.to(ctx.device)
        # Epoch sums: TSA-kept labelled examples, labelled examples, confident unlabelled
        # examples, unlabelled examples, consistency loss x rows, TSA threshold x steps, steps.
        self.accum = torch.zeros(7, dtype=torch.float64, device=ctx.device)

    def forward_loss(self, ctx: StepContext, images: Tensor, labels: Tensor, global_step: int) -> tuple[StepBatch, Tensor, Tensor]:
        """``(labelled batch, labelled logits, loss)`` of one step: the labelled uint8 batch
        from the loop's loader and the stream's next unlabelled batch."""
        cfg, method = ctx.config, ctx.method
        batch = method.prepare(images, labels, ctx.generator)
        clean_u8, base_u8 = self.stream.next()
        x_clean = method.normalize(clean_u8)
        x_aug = augment_unlabelled(self.op, base_u8, method.normalize, self.saliency, ctx.generator)
        b, u = batch.inputs.shape[0], x_clean.shape[0]
        inputs = torch.cat([batch.inputs, x_clean, x_aug]).contiguous(memory_format=ctx.memory_format)
        eta = tsa_threshold(cfg.uda_tsa, global_step / max(ctx.total_steps, 1), ctx.num_classes)
        with ctx.autocast():
            logits, early, _ = ctx.forward(inputs)
        out = uda_loss(
            logits[:b],
            batch.targets,
            logits[b : b + u],
            logits[b + u :],
            tsa=eta,
            temperature=cfg.uda_temperature,
            threshold=cfg.uda_threshold,
            weight=cfg.uda_weight,
            label_smoothing=cfg.label_smoothing,
        )
        loss = out.total
        if early is not None:
            loss = loss + cfg.early_loss_weight * ctx.criterion(early[:b].float(), batch.targets)
        with torch.no_grad():
            one = torch.ones((), dtype=torch.float64, device=self.accum.device)
            self.accum += torch.stack(
                [
                    out.sup_mask.sum().double(),
                    one * b,
                    out.conf_mask.sum().double(),
                    one * u,
                    out.unsup.detach().double() * u,
                    one * eta,
                    one,
                ]
            )
        return batch, logits[:b], loss

    def epoch_record(self) -> dict[str, float]:
        """The epoch's UDA statistics (reduced over ranks), then reset: the share of labelled
        examples TSA kept, the share of unlabelled examples above the confidence threshold,
        the mean consistency loss and TSA threshold, the unlabelled batches drawn so far."""
        from keepmix.train.distributed import all_reduce_sum

        kept, nl, conf, nu, unsup, eta, steps = all_reduce_sum(self.accum, self.dist).tolist()
        self.accum.zero_()
        return {
            "tsa_kept": kept / max(nl, 1),
            "uda_confident": conf / max(nu, 1),
            "uda_loss": unsup / max(nu, 1),
            "tsa_threshold": eta / max(steps, 1),
            "unlabelled_batches": self.stream.position,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "accum": self.accum}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        from keepmix.train.checkpoint import CheckpointError

        if not isinstance(state, dict) or set(state) != {"stream", "accum"}:
            raise CheckpointError(
                "the checkpoint has no semi-supervised state (the unlabelled stream's position): it "
                "was not written by a semi-supervised run of this keepmix"
            )
        self.stream.load_state_dict(state["stream"])
        self.accum = state["accum"].to(self.accum.device, torch.float64)
