"""Semi-supervised data (keepmix.data.semi): the labelled / unlabelled split, the unlabelled
stream, no label leaking into the pool, and an exact resume of a semi-supervised run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from keepmix.data.semi import UnlabelledStream, semi_split
from keepmix.data.split import Split
from keepmix.train.checkpoint import load_checkpoint
from keepmix.train.config import TrainConfig
from keepmix.train.data import prepare_data
from keepmix.train.loop import RunInterrupted, train

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tiny_data(cifar_uint8, cifar_labels):
    """48 real CIFAR-10 images to train on, 16 to test on."""
    train = Split(cifar_uint8[:48].clone(), cifar_labels[:48].clone(), CLASSES)
    return train, Split(cifar_uint8[48:].clone(), cifar_labels[48:].clone(), CLASSES)


def test_split_is_class_balanced_disjoint_complete_and_seeded():
    labels = torch.arange(1000) % 10
    lab, unl = semi_split(labels, 250, seed=3)
    assert lab.numel() == 250 and unl.numel() == 750
    assert torch.bincount(labels[lab], minlength=10).tolist() == [25] * 10
    assert set(lab.tolist()).isdisjoint(unl.tolist())
    assert sorted(lab.tolist() + unl.tolist()) == list(range(1000))
    assert torch.all(lab[1:] > lab[:-1]) and torch.all(unl[1:] > unl[:-1])
    again, _ = semi_split(labels, 250, seed=3)
    other, _ = semi_split(labels, 250, seed=4)
    assert torch.equal(lab, again) and not torch.equal(lab, other)
    # Unbalanced: any n, a uniform random choice.
    lab, unl = semi_split(labels, 7, seed=0, balanced=False)
    assert lab.numel() == 7 and unl.numel() == 993 and set(lab.tolist()).isdisjoint(unl.tolist())


@pytest.mark.parametrize(
    "n, match",
    [
        (1001, "semi_labels=1001 but the training set has only 1000 images"),
        (1000, "leaves no unlabelled images"),
        (255, "semi_labels=255 is not divisible by the 10 classes"),
        (0, "semi_labels must be a positive int"),
    ],
)
def test_split_errors_name_the_option(n, match):
    with pytest.raises(ValueError, match=match):
        semi_split(torch.arange(1000) % 10, n)


def test_split_with_a_small_class_says_so():
    labels = torch.cat([torch.zeros(100), torch.ones(3)]).long()
    with pytest.raises(ValueError, match="semi_labels=20: .*at most 3 per class"):
        semi_split(labels, 20)


def test_stream_batches_are_a_pure_function_of_the_position_and_resume_exactly():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    a = UnlabelledStream(images, 8, seed=5, crop_padding=2)
    drawn = [a.next() for _ in range(14)]  # 6 batches per pass: over two passes and into a third
    assert len(a) == 6 and a.position == 14
    b = UnlabelledStream(images, 8, seed=5, crop_padding=2)
    for _ in range(9):
        b.next()
    state = b.state_dict()
    c = UnlabelledStream(images, 8, seed=5, crop_padding=2)
    c.load_state_dict(state)
    for k in range(9, 14):
        v1, v2 = c.next()
        assert torch.equal(v1, drawn[k][0]) and torch.equal(v2, drawn[k][1])
    assert torch.equal(a.batch(3)[0], drawn[3][0])
    # Each pass is a permutation: its batches hold distinct images.
    idx = torch.cat([a.indices(k) for k in range(6)])
    assert idx.unique().numel() == 48
    # Two views: the same images, each with its own crop and flip.
    v1, v2 = drawn[0]
    assert not torch.equal(v1, v2)
    plain = UnlabelledStream(images, 8, seed=5, crop_padding=0, flip=False)
    p1, p2 = plain.batch(0)
    assert torch.equal(p1, images[plain.indices(0)]) and torch.equal(p1, p2)
    with pytest.raises(ValueError, match="too few for one unlabelled batch of 64"):
        UnlabelledStream(images, 64)
    with pytest.raises(ValueError, match="exactly 'position'"):
        c.load_state_dict({"pos": 1})


def test_labelled_images_never_leak_into_the_unlabelled_pool(tiny_data):
    from keepmix.train.data import TrainData
    from keepmix.train.uda import split_semi_data

    train_split, test_split = tiny_data
    data = TrainData(train_split, test_split, CLASSES, (0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(semi_labels=20, seed=1)
    labelled_data, pool = split_semi_data(data, cfg)
    lab_idx, unl_idx = semi_split(train_split.labels, 20, seed=1)
    assert torch.equal(labelled_data.train.images, train_split.images[lab_idx])
    assert torch.equal(pool, train_split.images[unl_idx]) and pool.shape[0] == 28
    labelled = {bytes(x.flatten().tolist()) for x in labelled_data.train.images}
    assert len(labelled) == 20
    # Every image any unlabelled batch ever shows (over several passes) is a pool image, never a labelled one.
    stream = UnlabelledStream(pool, 6, seed=0, crop_padding=0, flip=False)
    shown = set()
    for _ in range(3 * len(stream)):
        for view in stream.next():
            shown |= {bytes(x.flatten().tolist()) for x in view}
    assert shown and shown.isdisjoint(labelled)
    assert shown <= {bytes(x.flatten().tolist()) for x in pool}


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        name="s",
        model="small",
        epochs=2,
        batch_size=4,
        lr=0.05,
        out_dir=str(tmp_path),
        progress=False,
        pictures=False,
        log_every=1,
        threads=1,
        semi_labels=20,
        semi_mu=2,
        uda_augment="keeprandaugment",
        saliency="lowres",
        uda_tsa="linear",
        uda_threshold=0.3,
        warmup_epochs=0.5,
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, data, **kw):
    return train(cfg, data=prepare_data(*data, cfg), log=lambda m: None, **kw)


@pytest.mark.parametrize("stop_at", [3, 5])
def test_interrupted_and_resumed_semi_supervised_run_ends_bitwise_equal(tmp_path, tiny_data, stop_at):
    """Stop mid-epoch (3) and at the epoch boundary (5 steps per epoch), resume: the same
    weights, optimiser state, unlabelled position and metrics as an uninterrupted run."""
    full = _run(_cfg(tmp_path / "a"), tiny_data)

    def stop(trainer, step):
        if step == stop_at:
            trainer.request_stop()

    with pytest.raises(RunInterrupted) as e:
        _run(_cfg(tmp_path / "b"), tiny_data, on_step=stop)
    run_b = e.value.checkpoint.parent
    ck = load_checkpoint(run_b)
    assert not ck["finished"] and ck["global_step"] == stop_at
    assert ck["ranks"][0]["semi"]["stream"] == {"position": stop_at}  # the stream's position travels in the checkpoint
    train(None, resume=run_b, data=prepare_data(*tiny_data, _cfg(tmp_path / "b")), log=lambda m: None)
    a, b = load_checkpoint(full["run_dir"]), load_checkpoint(run_b)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["ranks"][0]["semi"]["stream"] == b["ranks"][0]["semi"]["stream"] == {"position": 10}
    assert torch.equal(a["ranks"][0]["aug_rng"], b["ranks"][0]["aug_rng"])
    drop = ("images_per_s", "epoch_time_s", "eval_time_s", "elapsed_s")
    ma = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in open(Path(full["run_dir"]) / "metrics.jsonl")]
    mb = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in open(run_b / "metrics.jsonl")]
    assert ma == mb and len(mb) == 2 and "uda_confident" in mb[0]


def test_resuming_a_semi_run_from_a_checkpoint_without_its_state_is_refused(tmp_path, tiny_data):
    import torch as _t

    from keepmix.train.checkpoint import CheckpointError

    def stop(trainer, step):
        if step == 2:
            trainer.request_stop()

    with pytest.raises(RunInterrupted) as e:
        _run(_cfg(tmp_path), tiny_data, on_step=stop)
    path = e.value.checkpoint
    state = _t.load(path, weights_only=True)
    del state["ranks"][0]["semi"]
    _t.save(state, path)
    with pytest.raises(CheckpointError, match="no semi-supervised state"):
        train(None, resume=path.parent, data=prepare_data(*tiny_data, _cfg(tmp_path)), log=lambda m: None)
