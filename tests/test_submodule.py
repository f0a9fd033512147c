"""An op is an ordinary submodule, and ``import keepmix`` loads the ops only.

No method of ``nn.Module`` is shadowed, so a model that holds ops takes ``.apply(fn)``,
``.to()``, ``state_dict()`` / ``load_state_dict()`` (an op's own state, RecursiveMix's history
or GridMask's scheduled ``p``, travels in it) and ``torch.compile``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_contract import FACTORIES
from torch import nn

import keepmix
from keepmix.base import Op


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_nn_module_method_is_shadowed(name):
    op = FACTORIES[name]()
    meant_to_be_overridden = {"forward", "extra_repr", "get_extra_state", "set_extra_state"}
    for attr in dir(nn.Module):
        if callable(getattr(nn.Module, attr, None)) and not attr.startswith("_") and attr not in meant_to_be_overridden:
            assert getattr(type(op), attr) is getattr(nn.Module, attr), f"{type(op).__name__}.{attr} shadows nn.Module.{attr}"


def test_a_model_holding_ops_takes_apply_to_and_state_dict():
    model = nn.Sequential(keepmix.Cutout(8), nn.Conv2d(3, 4, 3), keepmix.GridMask(p=0.8))
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert {"Cutout", "Conv2d", "GridMask", "Sequential"} <= set(seen)
    model.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Conv2d) else None)
    assert torch.count_nonzero(model[1].weight) == 0
    assert model.to(torch.float64)[1].weight.dtype == torch.float64
    model[2].set_epoch(1, 4)
    restored = nn.Sequential(keepmix.Cutout(8), nn.Conv2d(3, 4, 3), keepmix.GridMask(p=0.8)).double()
    restored.load_state_dict(model.state_dict())
    assert restored[2].p == pytest.approx(0.2)


def test_recursive_mix_history_travels_in_the_state_dict_of_its_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = keepmix.RecursiveMix(3)
            self.fc = nn.Linear(4, 3)

    net = Net()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    net.mix.update(x, y, torch.randn(2, 3))
    other = Net()
    other.load_state_dict(net.state_dict())
    assert torch.equal(other.mix.history[0], x)


def test_lightning_style_module_holds_its_op_and_compiles():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.augment = keepmix.Cutout(4)
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x):
            return self.net(self.augment(x) if self.training else x)

    model = Model().eval()
    x = torch.rand(2, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


def test_forward_is_the_only_protocol_method_subclasses_leave_alone():
    for name, make in FACTORIES.items():
        op = make()
        assert type(op).forward is Op.forward, name
        assert type(op).transform is Op.transform and type(op).sample_params is Op.sample_params, name


def test_import_keepmix_loads_the_ops_only():
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import keepmix\n"
        "new = set(sys.modules) - before\n"
        "ours = sorted(m for m in new if m == 'keepmix' or m.startswith('keepmix.'))\n"
        "heavy = sorted(m for m in new if m.split('.')[0] in ('tqdm', 'yaml', 'matplotlib'))\n"
        "harness = sorted(m for m in ours if m.split('.')[1:2] and m.split('.')[1] in ('train', 'viz', 'cli', 'data'))\n"
        "print(len(ours), heavy, harness)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    count, heavy, harness = res.stdout.strip().split(" ", 2)
    assert int(count) <= 40, res.stdout
    assert heavy.startswith("[]") and harness == "[]", res.stdout


def test_lazy_names_resolve():
    assert keepmix.build_model("small", num_classes=3).num_classes == 3
    assert keepmix.TrainConfig is not None and keepmix.FeatureHook is not None and keepmix.Split is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = keepmix.nope
