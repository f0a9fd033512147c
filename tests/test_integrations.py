"""keepmix.integrations: AugmentCollate (per-worker streams), the Lightning mixin (resumable
streams, validation untouched, clear errors) and the recipes in examples/recipes."""

from __future__ import annotations

import math
import multiprocessing
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import keepmix
from keepmix.integrations.collate import AugmentCollate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "examples" / "recipes"
FORK = "fork" in multiprocessing.get_all_start_methods()
needs_fork = pytest.mark.skipif(not FORK, reason="DataLoader workers started by fork (Linux)")
quiet_lightning = pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:.*LeafSpec", "ignore:.*no `val_dataloader`")


def _batches(loader: DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------ recipes
@pytest.mark.slow
@quiet_lightning
@pytest.mark.parametrize("name", ["timm_style", "torchvision_collate", "lightning_module"])
def test_recipe_runs_and_trains(name: str) -> None:
    if name == "lightning_module":
        pytest.importorskip("pytorch_lightning")
    if name == "torchvision_collate" and not FORK:
        pytest.skip("the recipe's workers need fork when it is loaded by runpy")
    path = RECIPES / f"{name}.py"
    assert len(path.read_text().splitlines()) <= 50, "recipes are embedded in the README: keep them short"
    loss = runpy.run_path(str(path), run_name=f"recipe_{name}")["main"]()
    assert isinstance(loss, float) and math.isfinite(loss) and 0.0 < loss < 10.0


# ------------------------------------------------------------------------------ AugmentCollate
def _loader(op: keepmix.Op, seed: int, loader_seed: int, workers: int = 2, collate: AugmentCollate | None = None) -> DataLoader:
    # Identical inputs in every batch: 16 all-ones images, labels 0 1 2 3 0 1 2 3 ...
    data = TensorDataset(torch.ones(16, 1, 8, 8), torch.arange(16) % 4)
    kw = {"multiprocessing_context": "fork"} if workers else {}
    return DataLoader(
        data,
        batch_size=4,
        num_workers=workers,
        collate_fn=collate or AugmentCollate(op, seed=seed),
        generator=torch.Generator().manual_seed(loader_seed),
        **kw,
    )


OPS = {
    "cutout": lambda: keepmix.Cutout(4),  # the boxes show in the images
    "mixupcutmix": lambda: keepmix.MixupCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", num_classes=4),  # lambdas in the targets
}


@needs_fork
@pytest.mark.parametrize("kind", sorted(OPS))
def test_collate_workers_draw_independent_reproducible_streams(kind: str) -> None:
    op = OPS[kind]()
    run = _batches(_loader(op, seed=3, loader_seed=7))
    assert len(run) == 4  # batches 0, 2 from worker 0 and 1, 3 from worker 1, all with the same input
    x0, y0 = run[0]
    assert not (torch.equal(x0, run[1][0]) and torch.equal(y0, run[1][1])), "the two workers drew the same params"
    assert not (torch.equal(x0, run[2][0]) and torch.equal(y0, run[2][1])), "a worker repeated its params"
    if kind == "mixupcutmix":
        assert y0.dtype == torch.float32 and y0.shape == (4, 4)
        assert not torch.equal(y0, run[1][1])
    else:
        assert torch.equal(y0, torch.arange(4)) and (x0 == 0).any()
    # A rerun with the same seeds repeats every batch exactly; another seed of either kind does not.
    assert _same(run, _batches(_loader(op, seed=3, loader_seed=7)))
    assert not _same(run, _batches(_loader(op, seed=3, loader_seed=8)))
    assert not _same(run, _batches(_loader(op, seed=4, loader_seed=7)))


@needs_fork
def test_collate_used_in_the_main_process_still_gives_workers_their_own_streams() -> None:
    """The bug this class exists for: a generator made in the main process and then copied
    into the workers by fork gave every worker the same stream."""
    op = keepmix.Cutout(4)
    collate = AugmentCollate(op, seed=3)
    collate([(torch.ones(1, 8, 8), 0), (torch.ones(1, 8, 8), 1)])  # the main process's generator now exists
    loader = _loader(op, 3, 7, collate=collate)
    first = _batches(loader)
    assert not torch.equal(first[0][0], first[1][0])
    assert _same(first, _batches(_loader(op, 3, 7)))  # as if the main process had never called it
    assert not _same(first, _batches(loader))  # the next epoch's workers draw new streams
    restored = pickle.loads(pickle.dumps(collate))  # what spawn ships to a worker: no generator
    assert restored._generator is None and restored.seed == 3


def test_collate_in_the_main_process_is_the_plain_seeded_stream() -> None:
    op = keepmix.CutMix(num_classes=4)
    data = TensorDataset(torch.rand(12, 3, 8, 8), torch.arange(12) % 4)
    got = _batches(DataLoader(data, batch_size=4, num_workers=0, collate_fn=AugmentCollate(op, seed=5)))
    g = torch.Generator().manual_seed(5)
    want = [op(x, y, generator=g) for x, y in DataLoader(data, batch_size=4)]
    assert _same(got, want)
    for seed in (0, 5, 2**40):
        assert torch.equal(
            torch.rand(6, generator=keepmix.worker_generator(seed)), torch.rand(6, generator=torch.Generator().manual_seed(seed))
        )


def test_collate_label_preserving_op_returns_the_labels() -> None:
    x, y = AugmentCollate(keepmix.Cutout(2))([(torch.rand(1, 4, 4), 2), (torch.rand(1, 4, 4), 3)])
    assert x.shape == (2, 1, 4, 4) and torch.equal(y, torch.tensor([2, 3]))


def test_collate_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match="op must be a keepmix op"):
        AugmentCollate(nn.Identity())  # type: ignore[arg-type]  # the wrong type is the point of the test
    with pytest.raises(TypeError, match="collate_fn must be callable"):
        AugmentCollate(keepmix.Cutout(2), collate_fn=3)  # type: ignore[arg-type]  # the wrong type is the point of the test
    with pytest.raises(ValueError, match="seed"):
        AugmentCollate(keepmix.Cutout(2), seed=-1)
    collate = AugmentCollate(keepmix.Cutout(2))
    with pytest.raises(TypeError, match=r"\(image, label\).*length 3"):
        collate([(torch.rand(1, 4, 4), 0, 1)])
    with pytest.raises(TypeError, match=r"\(image, label\).*dict"):
        collate([{"image": torch.rand(1, 4, 4), "label": 0}])


def test_integrations_import_without_lightning() -> None:
    """Neither Lightning package is needed to import the mixin; using it outside a
    LightningModule is refused with the class line to write."""
    code = (
        "import sys; sys.modules['pytorch_lightning'] = None; sys.modules['lightning'] = None\n"
        "import keepmix, keepmix.integrations\n"
        "from keepmix.integrations import AugmentCollate\n"
        "from torch import nn\n"
        "class M(keepmix.integrations.KeepmixAugmentation, nn.Module):\n    pass\n"
        "try:\n    M().set_augmentation(keepmix.Cutout(2))\n"
        "except TypeError as e:\n    assert 'M(KeepmixAugmentation, L.LightningModule)' in str(e), e\n"
        "else:\n    raise SystemExit('no TypeError')\n"
        "assert 'pytorch_lightning' not in sys.modules or sys.modules['pytorch_lightning'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


# ----------------------------------------------------------------------------------- Lightning
def _lightning():
    pl = pytest.importorskip("pytorch_lightning")
    from keepmix.integrations.lightning import KeepmixAugmentation

    class Recorder(KeepmixAugmentation, pl.LightningModule):
        def __init__(self, op: keepmix.Op | None, seed: int = 0) -> None:
            super().__init__()
            self.net = nn.Linear(64, 4)
            self.set_augmentation(op, seed=seed)
            self.train_batches: list = []
            self.val_batches: list = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.train_batches.append((x.clone(), y.clone()))
            return keepmix.SoftTargetCrossEntropy()(self.net(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            self.val_batches.append(tuple(t.clone() for t in batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return pl, Recorder


DATA = TensorDataset(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4)


def _trainer(pl, **kw):
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw
    )


@pytest.mark.slow
@quiet_lightning
def test_lightning_resume_continues_the_augmentation_stream(tmp_path: Path) -> None:
    pl, Recorder = _lightning()
    loader = lambda: DataLoader(DATA, batch_size=4)  # two steps an epoch, same order every epoch
    op = lambda: keepmix.CutMix(num_classes=4)

    full = Recorder(op(), seed=11)
    _trainer(pl, max_epochs=2).fit(full, loader())
    assert len(full.train_batches) == 4
    # Rank 0's stream is torch.Generator().manual_seed(seed), and the epochs see the same images,
    # so a stream that restarted on resume would repeat epoch 0.
    x, y = next(iter(loader()))
    assert _same(full.train_batches[:1], [op()(x, y, generator=torch.Generator().manual_seed(11))])
    assert not _same(full.train_batches[:2], full.train_batches[2:])

    first = Recorder(op(), seed=11)
    trainer = _trainer(pl, max_epochs=1)
    trainer.fit(first, loader())
    ckpt = tmp_path / "epoch0.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["keepmix"]
    assert saved["device"] == "cpu" and saved["seed"] == 11 and saved["batches"] == 2
    assert saved["states"].dtype == torch.uint8 and saved["states"].shape[0] == 1

    resumed = Recorder(op(), seed=11)
    _trainer(pl, max_epochs=2).fit(resumed, loader(), ckpt_path=ckpt)
    assert _same(first.train_batches, full.train_batches[:2])
    assert _same(resumed.train_batches, full.train_batches[2:])


@pytest.mark.slow
@quiet_lightning
def test_lightning_validation_batches_untouched_and_label_preserving_op() -> None:
    pl, Recorder = _lightning()
    model = Recorder(keepmix.Cutout(4, fill=0.0), seed=1)
    _trainer(pl, max_epochs=1, limit_val_batches=1).fit(model, DataLoader(DATA, batch_size=4), DataLoader(DATA, batch_size=4))
    raw = (DATA.tensors[0][:4], DATA.tensors[1][:4])
    assert len(model.val_batches) == 2  # the sanity check and the epoch's validation
    assert all(_same([v], [raw]) for v in model.val_batches)
    x, y = model.train_batches[0]
    assert torch.equal(y, raw[1]) and not torch.equal(x, raw[0]) and (x == 0).any()  # Cutout keeps the labels


def test_lightning_errors_and_the_batches_it_leaves_alone() -> None:
    pl, Recorder = _lightning()
    model = Recorder(keepmix.Cutout(2))
    with pytest.raises(TypeError, match="op must be a keepmix op"):
        model.set_augmentation(nn.Identity())  # type: ignore[arg-type]  # the wrong type is the point of the test
    with pytest.raises(TypeError, match="op must be a keepmix op"):
        model.keepmix_op = lambda x: x
    with pytest.raises(ValueError, match="seed"):
        model.set_augmentation(keepmix.Cutout(2), seed=-3)
    trainer = _trainer(pl)
    model.trainer = trainer
    batch = (torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    trainer.training = False
    assert model.on_after_batch_transfer(batch, 0) is batch  # validation / test / predict
    trainer.training = True
    out = model.on_after_batch_transfer(list(batch), 0)
    assert isinstance(out, list) and out[1] is batch[1]
    for bad, what in (({"image": batch[0]}, "dict"), (batch[0], "Tensor"), ((*batch, batch[1]), "tuple of length 3")):
        with pytest.raises(TypeError, match=rf"argument batch.*\(images, labels\).*got {what}"):
            model.on_after_batch_transfer(bad, 0)
    with pytest.raises(ValueError, match="labels"):  # a mixing op without labels says so
        model.set_augmentation(keepmix.CutMix(num_classes=2))
        model.on_after_batch_transfer((batch[0], None), 0)
    model.set_augmentation(None)
    assert model.on_after_batch_transfer(batch, 0) is batch
    # The op stays out of the module tree: .to() works and the state_dict is the net's.
    assert set(model.state_dict()) == {"net.weight", "net.bias"}


def test_lightning_mixin_without_set_augmentation_raises_at_the_first_training_batch() -> None:
    pl = pytest.importorskip("pytorch_lightning")
    from keepmix.integrations.lightning import KeepmixAugmentation

    class Forgot(KeepmixAugmentation, pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(64, 4)

    model = Forgot()
    trainer = _trainer(pl)
    model.trainer = trainer
    batch = (torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    trainer.training = False
    assert model.on_after_batch_transfer(batch, 0) is batch  # validation batches are not its business
    trainer.training = True
    with pytest.raises(RuntimeError, match=r"set_augmentation\(op\) was never called"):
        model.on_after_batch_transfer(batch, 0)


def test_lightning_ranks_draw_and_resume_their_own_streams() -> None:
    _, Recorder = _lightning()
    from keepmix.integrations.lightning import rank_seed

    assert rank_seed(9, 0) == 9 and len({rank_seed(9, r) for r in range(8)}) == 8
    assert all(0 <= rank_seed(s, r) < 2**63 for s in (0, 2**62) for r in (1, 7))

    def rank_model(rank: int, world: int):
        m = Recorder(keepmix.Cutout(2), seed=9)
        m._keepmix_rank_world = lambda: (rank, world)
        return m

    cpu = torch.device("cpu")
    ranks = [rank_model(r, 2) for r in range(2)]
    gens = [m.keepmix_generator(cpu) for m in ranks]
    assert torch.equal(gens[0].get_state(), torch.Generator().manual_seed(9).get_state())
    assert torch.equal(gens[1].get_state(), torch.Generator().manual_seed(rank_seed(9, 1)).get_state())
    for g in gens:
        torch.rand(3, generator=g)
    states = torch.stack([g.get_state() for g in gens])
    ckpt: dict = {}
    ranks[1].all_gather = lambda t: states.clone()  # what DDP's all_gather returns on every rank
    ranks[1].on_save_checkpoint(ckpt)  # rank 0 writes, but every rank's stream is in it
    assert torch.equal(ckpt["keepmix"]["states"], states)
    for r in range(2):
        m = rank_model(r, 2)
        m.on_load_checkpoint(ckpt)
        assert torch.equal(m.keepmix_generator(cpu).get_state(), states[r])
    m = rank_model(0, 4)  # another world size cannot continue the streams
    m.on_load_checkpoint(ckpt)
    with pytest.warns(UserWarning, match="restart"):
        g = m.keepmix_generator(cpu)
    assert not torch.equal(g.get_state(), states[0])
