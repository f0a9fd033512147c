"""The benchmark scripts: timing helpers, loop references that agree with keepmix (so the
speed comparison is like for like), and smoke runs of both scripts at a tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_ops  # noqa: E402
import bench_train_step  # noqa: E402
import loop_reference as L  # noqa: E402
import timing  # noqa: E402

from keepmix.functional.regions import box_sums  # noqa: E402
from keepmix.functional.selection import select_boxes  # noqa: E402
from keepmix.keep import KeepPaste  # noqa: E402
from keepmix.mixing import CutMix, Mixup  # noqa: E402
from keepmix.placers import KeepPlacer  # noqa: E402
from keepmix.policies import OP_NAMES, AutoAugment, RandAugment, TrivialAugmentWide  # noqa: E402
from keepmix.regional import Cutout, RandomErasing  # noqa: E402
from keepmix.sampling import selection_keys  # noqa: E402

K = 10


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """The scripts set torch's thread count for the process: put it back for other tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=["uint8", "float32"])
def images(request, cifar_uint8):
    x = cifar_uint8[:24]
    return x if request.param == "uint8" else x.float() / 255.0


# ----------------------------------------------------------------------------- timing


def test_stats_median_quartiles_and_rate_map():
    s = timing.Stats.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.min, s.max, s.q1, s.q3, s.n) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    rate = s.map(lambda t: 10.0 / t)  # time -> rate is decreasing: the ends swap
    assert (rate.median, rate.min, rate.max) == (10.0 / 3.0, 2.0, 10.0)
    assert rate.q1 <= rate.median <= rate.q3


def test_paired_ratio_is_per_round():
    r = timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert (r.median, r.min, r.max) == (2.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="same rounds"):
        timing.paired_ratio([1.0], [1.0, 2.0])


def test_interleaved_rotates_order_and_counts_calls():
    log: list[str] = []
    contenders = {n: (lambda n=n: log.append(n)) for n in "abc"}
    samples = timing.interleaved(contenders, rounds=3, warmup=1, calls={"a": 1, "b": 2, "c": 1})
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    timed = log[3:]  # after one warm-up call each
    assert timed == ["a", "b", "b", "c", "b", "b", "c", "a", "c", "a", "b", "b"]
    assert all(t >= 0 for v in samples.values() for t in v)


def test_machine_info_names_cpu_threads_and_versions():
    info = timing.machine_info("cpu")
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert info["cpu"] and info["usable_cores"] >= 1
    assert info["torch"] in timing.machine_line(info)


# ------------------------------------------------- loop references agree with keepmix


def test_erase_loop_matches_cutout_and_random_erasing(images):
    for op in (Cutout(16), RandomErasing(p=0.7, value=0.0)):
        params = op.sample_params(images, generator=_gen(1))
        assert torch.equal(L.erase_apply_loop(images, params.boxes, 0.0), op.transform(images, None, params))


def test_mixup_loop_matches_keepmix(images, cifar_labels):
    y = cifar_labels[: images.shape[0]]
    op = Mixup(1.0, num_classes=K)
    params = op.sample_params(images, y, generator=_gen(2))
    want_x, want_t = op.transform(images, y, params)
    got_x, got_t = L.mixup_apply_loop(images, torch.nn.functional.one_hot(y, K).float(), params.lam, params.perm)
    assert torch.equal(got_x, want_x)
    assert torch.equal(got_t, want_t)


def test_cutmix_loop_matches_keepmix(images, cifar_labels):
    y = cifar_labels[: images.shape[0]]
    op = CutMix(1.0, 1.0, K)
    params = op.sample_params(images, y, generator=_gen(3))
    want_x, want_t = op.transform(images, y, params)
    got_x, got_t = L.cutmix_apply_loop(images, torch.nn.functional.one_hot(y, K).float(), params.boxes, params.perm)
    assert torch.equal(got_x, want_x)
    assert torch.equal(got_t, want_t)


@pytest.mark.parametrize(
    "make",
    [lambda: AutoAugment("cifar10"), lambda: RandAugment(2, 9), lambda: TrivialAugmentWide(), lambda: RandAugment(3, 20, ops=OP_NAMES)],
    ids=["autoaugment", "randaugment", "trivialaugment", "randaugment-every-op"],
)
def test_policy_loop_matches_keepmix(images, make):
    op = make()
    params = op.sample_params(images, generator=_gen(4))
    assert torch.equal(L.policy_apply_loop(images, params), op.transform(images, None, params))


def test_paste_loop_matches_keep_paste(images):
    sal = torch.rand(images.shape[0], 32, 32, generator=_gen(5))
    op = KeepPaste(lambda t: t.flip(-1), size=12)
    params = op.sample_params(images, saliency=sal, generator=_gen(6))
    augmented = images.flip(-1)
    assert torch.equal(L.paste_apply_loop(images, augmented, params.boxes), op.transform(images, None, params))


@pytest.mark.parametrize("placement,side", [("center", "below"), ("inside", "below"), ("inside", "above")])
def test_loop_threshold_equals_keepmix_tau(placement, side):
    g = _gen(7)
    sal = torch.rand(6, 20, 28, generator=g) ** 3
    sizes = torch.tensor([[5, 9], [12, 3], [1, 1], [20, 28], [7, 7], [16, 10]])
    state = g.get_state()
    sel = select_boxes(sal, sizes, 0.6, placement, side, keys=selection_keys(6, 0.6, side, generator=g))
    # KeepPlacer.select is that selection with the keys drawn from its generator.
    g.set_state(state)
    again = KeepPlacer(0.6, whole_boxes=placement == "inside").select(sal, sizes, "center", side, generator=g)
    assert torch.equal(again.boxes, sel.boxes) and torch.equal(again.tau, sel.tau)
    for i, (h, w) in enumerate(sizes.tolist()):
        tau = L.keep_threshold(sal[i].double().numpy(), h, w, 0.6, placement)
        assert tau == pytest.approx(float(sel.tau[i]), rel=1e-12, abs=1e-12)


def _zeroed_box(img: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box of the pixels set to 0 in every channel; checks that they form a box."""
    ys, xs = torch.nonzero((img == 0).all(0), as_tuple=True)
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    assert int((img[:, box[0] : box[2], box[1] : box[3]] == 0).all(0).sum()) == (box[2] - box[0]) * (box[3] - box[1])
    return box


def test_keep_cutout_loop_cuts_below_the_threshold():
    g = _gen(8)
    x = 0.5 + 0.5 * torch.rand(16, 3, 32, 32, generator=g)  # no zeros: the cut box is what is 0
    sal = torch.rand(16, 32, 32, generator=g) ** 4
    out = L.keep_cutout_loop(x, sal, np.random.RandomState(0), length=16)
    sat = torch.nn.functional.pad(sal.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    for i in range(16):
        box = _zeroed_box(out[i])
        score = float(box_sums(sat[i : i + 1], torch.tensor([box]))[0])
        assert score < L.keep_threshold(sal[i].double().numpy(), 16, 16, 0.6, "center")
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[box[0] : box[2], box[1] : box[3]] = False
        assert torch.equal(out[i][:, outside], x[i][:, outside])


def test_keep_paste_loop_keeps_a_region_above_the_threshold():
    g = _gen(9)
    x = torch.rand(8, 3, 32, 32, generator=g)
    sal = torch.rand(8, 32, 32, generator=g) ** 4
    out = L.keep_paste_loop(x, sal, np.random.RandomState(1), lambda t: torch.zeros_like(t), size=10)
    for i in range(8):
        kept = (out[i] != 0).all(0)
        ys, xs = torch.nonzero(kept, as_tuple=True)
        y1, x1 = int(ys.min()), int(xs.min())
        assert int(kept.sum()) == 100 and torch.equal(out[i][:, y1 : y1 + 10, x1 : x1 + 10], x[i][:, y1 : y1 + 10, x1 : x1 + 10])
        score = float(sal[i, y1 : y1 + 10, x1 : x1 + 10].double().sum())
        assert score > L.keep_threshold(sal[i].double().numpy(), 10, 10, 0.6, "inside")


def test_plain_loops_produce_the_ops_kind_of_output(cifar_uint8, cifar_labels):
    x = cifar_uint8[:16].float() / 255.0 + 0.01  # strictly positive: erased pixels are exactly 0
    rng = np.random.RandomState(3)
    out = L.cutout_loop(x, rng, length=8)
    for i in range(16):
        y1, x1, y2, x2 = _zeroed_box(out[i])
        assert y2 - y1 <= 8 and x2 - x1 <= 8 and (y2 - y1 == 8 or y1 == 0 or y2 == 32)
    mixed, t = L.cutmix_loop(x, cifar_labels[:16], rng, K)
    assert torch.allclose(t.sum(1), torch.ones(16)) and mixed.shape == x.shape
    assert L.randaugment_loop(cifar_uint8[:4], rng).dtype == torch.uint8


# ------------------------------------------------------------------------- smoke runs


def test_bench_ops_quick_writes_every_row(tmp_path):
    ops = list(bench_ops._OP_NAMES)
    rows = bench_ops.main(["--quick", "--out", str(tmp_path), "--shapes", "4x32,2x48", "--threads", "1"])
    data = json.loads((tmp_path / "ops.json").read_text())
    assert len(rows) == len(data["rows"]) == len(ops) * 2 * 2
    keys = {(r["op"], tuple(r["shape"]), r["dtype"]) for r in data["rows"]}
    assert keys == {(o, (b, 3, s, s), d) for o in ops for b, s in ((4, 32), (2, 48)) for d in ("float32", "uint8")}
    by = {(r["op"], r["shape"][2], r["dtype"]): r for r in data["rows"]}
    assert "kornia" in by[("CutMix", 32, "float32")]["images_per_s"]
    assert "kornia" not in by[("CutMix", 32, "uint8")]["images_per_s"]
    assert by[("CutMix", 32, "uint8")]["target"].startswith("n/a")
    assert by[("KeepCutout", 32, "float32")]["keepmix_over_loop"]["median"] > 0
    md = (tmp_path / "ops.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| op ")]
    assert len(table) == len(rows)
    for o in ops:
        assert f"| {o} | 4x3x32x32 | float32 |" in md
    assert "What each loop reference does" in md and "while True" in md


def test_bench_train_step_quick_writes_every_row(tmp_path):
    rows = bench_train_step.main(
        [
            "--quick",
            "--models",
            "small",
            "--groups",
            "cutmix",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--profile",
            "always",
            "--out",
            str(tmp_path),
        ]
    )
    data = json.loads((tmp_path / "train_step.json").read_text())
    labels = [v.label for v in bench_train_step.GROUPS["cutmix"]]
    assert [r["variant"] for r in data["rows"]] == labels == [r["variant"] for r in rows]
    by = {r["variant"]: r for r in data["rows"]}
    assert by["CutMix"]["ratio"] is None and by["RecursiveMix"]["ratio"]["median"] > 0
    assert by["RecursiveMix"]["target"] == bench_train_step.RECURSIVEMIX_TARGET
    md = (tmp_path / "train_step.md").read_text()
    for label in labels:
        assert f"| small | {label} |" in md
    assert "## Profiles" in md and "saliency pass" in md and "Self CPU" in md


def test_bench_train_step_stem_names_the_results_file(tmp_path):
    bench_train_step.main(
        [
            "--quick",
            "--models",
            "small",
            "--groups",
            "cutmix",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--profile",
            "never",
            "--out",
            str(tmp_path),
            "--stem",
            "rerun",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rerun.json", "rerun.md"]


def test_train_step_groups_define_their_baselines():
    for variants in bench_train_step.GROUPS.values():
        labels = {v.label for v in variants}
        for v in variants:
            assert v.baseline is None or v.baseline in labels
            assert v.head_baseline is None or v.head_baseline in labels
            if v.fields.get("saliency", "").find("early") >= 0:
                assert v.fields["early_head"] and v.head_baseline is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loop_references_agree_on_cuda(cifar_uint8):
    x = cifar_uint8[:8].cuda()
    op = Cutout(16)
    params = op.sample_params(x, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(L.erase_apply_loop(x, params.boxes, 0), op.transform(x, None, params))
    sal = torch.rand(8, 32, 32, device="cuda")
    out = L.keep_cutout_loop(x, sal, np.random.RandomState(0))
    assert out.device.type == "cuda" and out.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_ops_quick_on_cuda(tmp_path):
    rows = bench_ops.main(["--quick", "--device", "cuda", "--out", str(tmp_path), "--shapes", "4x32", "--ops", "copy,CutMix,KeepCutout"])
    assert {r["device"] for r in rows} == {"cuda"} and len(rows) == 6


# --------------------------------------------- GridMask, AugMix, Attentive CutMix, ResizeMix, SaliencyMix, FMix
def test_new_op_loops_match_keepmix_given_its_params(images, cifar_labels):
    from keepmix.attentive_cutmix import AttentiveCutMix
    from keepmix.augmix import AugMix
    from keepmix.fmix import FMix
    from keepmix.gridmask import GridMask
    from keepmix.resizemix import ResizeMix
    from keepmix.saliencymix import SaliencyMix

    y = cifar_labels[: images.shape[0]]
    t = torch.nn.functional.one_hot(y, K).float()
    g = GridMask(p=1.0)
    params = g.sample_params(images, generator=_gen(1))
    assert torch.equal(L.gridmask_apply_loop(images, params), g.transform(images, None, params))
    a = AugMix()
    params = a.sample_params(images, generator=_gen(2))
    assert torch.equal(L.augmix_apply_loop(images, params), a.transform(images, None, params))
    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, 4, 8, stride=8).eval()
    ac = AttentiveCutMix(teacher, num_classes=K)
    params = ac.sample_params(images, y, generator=_gen(3))
    got = L.attentive_apply_loop(images, t, params.cells, params.perm)
    want = ac.transform(images, y, params)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    r = ResizeMix(num_classes=K)
    params = r.sample_params(images, y, generator=_gen(4))
    got, want = L.resizemix_apply_loop(images, t, params.boxes, params.perm), r.transform(images, y, params)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    sm = SaliencyMix(num_classes=K)
    params = sm.sample_params(images, y, generator=_gen(5))
    got, want = L.cutmix_apply_loop(images, t, params.boxes, params.perm), sm.transform(images, y, params)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    f = FMix(num_classes=K)
    params = f.sample_params(images, y, generator=_gen(6))
    got, want = L.fmix_apply_loop(images, t, params.masks, params.perm), f.transform(images, y, params)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_new_op_loops_follow_the_paper_definitions(cifar_uint8, cifar_labels):
    from keepmix.saliencymix import spectral_residual_saliency

    x, y = cifar_uint8[:12], cifar_labels[:12]
    rng = np.random.RandomState(0)
    g = L.gridmask_loop(x, rng, p=1.0)
    dropped = (g != x).any(1).float().mean()
    assert 0.05 < dropped < 0.4  # the squares of units 14..31 with r = 0.6 (a unit drops (1 - r)^2 ~ 16%)
    # SaliencyMix's loop peak is the spectral map's peak (numpy FFT vs keepmix's torch.fft).
    for i in range(4):
        sal = spectral_residual_saliency(x[i : i + 1])[0]
        assert L._spectral_peak(x[i]) == divmod(int(sal.argmax()), 32)
    for fn in (L.resizemix_loop, L.saliencymix_loop, L.fmix_loop):
        mixed, t = fn(x, y, rng, K)
        assert mixed.shape == x.shape and torch.allclose(t.sum(1), torch.ones(12))
    mixed, t = L.fmix_loop(x, y, rng, K)
    own = t.gather(1, y.view(-1, 1)).squeeze(1)
    kept = (mixed == x).all(1).float().mean(dim=(1, 2))  # pixels still the image's own (or equal by chance)
    assert (kept >= own - 1e-6).all()
    assert L.augmix_loop(x[:4], rng).dtype == torch.uint8
    out, t = L.attentive_cutmix_loop(x.float() / 255, y, rng, torch.nn.Conv2d(3, 2, 8, stride=8).eval(), K)
    assert torch.allclose(t.sum(1), torch.ones(12))
