"""init_from_card: the shipped card rebuilt as a trainable network computes what
the card's f32 file computes, in eval mode and (on the calibration batch) in
train mode, where BatchNorm uses the batch's own statistics."""

import json

import torch

from common import REPO
from init_from_card import folded_layers, rebuild


def shipped_card():
    return json.loads((REPO / "models" / "leukoscope.card.json").read_text())


def test_folded_layers_match_the_card():
    card = shipped_card()
    convs, hw, hb = folded_layers(REPO / "models" / card["extra"]["f32_model"]["file"])
    widths = [a[0] for a in card["extra"]["architecture"]["arch"] if a != "M"]
    assert [w.shape[0] for w, _ in convs] == widths
    assert all(b.shape == (w.shape[0],) for w, b in convs)
    assert hw.shape == (len(card["classes"]), widths[-1]) and hb.shape == (len(card["classes"]),)


def test_rebuilt_network_computes_the_shipped_one():
    x = torch.randn(64, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    model, err = rebuild(shipped_card(), x)
    assert err < 1e-3
    with torch.no_grad():
        model.eval()
        ref = model(x)
        model.train()
        for m in model.modules():  # MixStyle and dropout would make train mode random
            if not isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d)):
                m.eval()
        got = model(x)
    assert float((got - ref).abs().max()) < 1e-2
