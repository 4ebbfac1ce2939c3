"""--init across layouts: "strided" starts from a "vgg" run's weights (each max-pool
folded into the stride of the convolution before it), a layout whose weights differ
in shape is refused."""

import numpy as np
import pytest
import torch

from train import ARCHS, CellNet, load_features_and_head, matching_keys, train


def test_strided_starts_from_the_vgg_weights(tmp_path):
    classes = ["A", "B", "C"]
    torch.manual_seed(0)
    vgg = CellNet(len(classes), arch=ARCHS["vgg"])
    ck = {"state_dict": vgg.state_dict(), "info": {"classes": classes, "arch": ARCHS["vgg"], "norm": "batch",
                                                     "epochs": 1, "lr": 1e-3}}
    strided = CellNet(len(classes), arch=ARCHS["strided"], mixstyle=True)
    assert matching_keys(strided, ck["state_dict"]) is not None
    assert load_features_and_head(strided, ck, classes) == []
    convs = [m.weight for m in strided.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(torch.equal(a, b.weight) for a, b in zip(convs, [m for m in vgg.modules()
                                                               if isinstance(m, torch.nn.Conv2d)]))
    # The same weights computing the same thing up to the first pool: the first
    # convolution's output is identical.
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 96, 96)).astype(np.float32))
    assert torch.allclose(strided.eval().features[0](x), vgg.eval().features[0](x))

    torch.save(ck, tmp_path / "vgg.pt")
    masks = np.ones((16, len(classes)), dtype=bool)
    out = train(x.repeat(8, 1, 1, 1).numpy(), masks, ["pbc:A"] * 16, classes, tmp_path / "run", epochs=1, batch=8,
                threads=1, arch="strided", init=tmp_path / "vgg.pt")
    assert out["init"]["arch_from"] == ARCHS["vgg"]

    wider = CellNet(len(classes), arch=[(24, 2), (48, 2), (96, 2), (128, 1), (128, 2), (192, 1)])
    assert matching_keys(wider, ck["state_dict"]) is None
    with pytest.raises(ValueError, match="do not fit"):
        torch.save({**ck, "state_dict": wider.state_dict()}, tmp_path / "wider.pt")
        train(x.repeat(8, 1, 1, 1).numpy(), masks, ["pbc:A"] * 16, classes, tmp_path / "run2", epochs=1, batch=8,
              threads=1, arch="vgg", init=tmp_path / "wider.pt")


def test_group_norm_starts_from_the_batch_norm_weights(tmp_path):
    classes = ["A", "B"]
    torch.manual_seed(0)
    vgg = CellNet(len(classes), arch=ARCHS["vgg"])
    for m in vgg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ck = {"state_dict": vgg.state_dict(), "info": {"classes": classes, "arch": ARCHS["vgg"], "norm": "batch",
                                                     "epochs": 1, "lr": 1e-3}}
    gn = CellNet(len(classes), arch=ARCHS["vgg"], norm="group")
    assert matching_keys(gn, ck["state_dict"]) is not None
    load_features_and_head(gn, ck, classes)
    bns = [m for m in vgg.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gns = [m for m in gn.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(bns) == len(gns) == 6
    assert all(torch.equal(b.weight, g.weight) and torch.equal(b.bias, g.bias) for b, g in zip(bns, gns))
    torch.save(ck, tmp_path / "vgg.pt")
    x = np.random.default_rng(0).normal(size=(16, 3, 96, 96)).astype(np.float32)
    out = train(x, np.ones((16, 2), dtype=bool), ["pbc:A"] * 16, classes, tmp_path / "run", epochs=1, batch=8,
                threads=1, arch="vgg", norm="group", init=tmp_path / "vgg.pt")
    assert out["init"]["norm_from"] == "batch"
