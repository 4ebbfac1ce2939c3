"""train(teacher=...): with the teacher's soft targets as the only signal (labels
that allow every class), the student's calls move to the teacher's."""

import numpy as np
import torch

from train import ARCHS, CellNet, train


def kl_to(teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(x), 1)
        s = torch.log_softmax(student(x), 1)
    return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_distillation_pulls_the_student_to_the_teacher(tmp_path):
    classes = ["A", "B", "C"]
    torch.manual_seed(0)
    teacher = CellNet(len(classes), arch=ARCHS["vgg"]).eval()
    info = {"classes": classes, "arch": ARCHS["vgg"], "norm": "batch", "mixstyle": False}
    torch.save({"state_dict": teacher.state_dict(), "info": info}, tmp_path / "teacher.pt")
    x = np.random.default_rng(0).normal(size=(64, 3, 96, 96)).astype(np.float32)
    masks = np.ones((64, len(classes)), dtype=bool)  # the labels say nothing
    xt = torch.from_numpy(x)
    torch.manual_seed(1)
    before = kl_to(teacher, CellNet(len(classes), arch=ARCHS["strided"]).eval(), xt)
    out = train(x, masks, ["pbc:A"] * 64, classes, tmp_path / "run", epochs=4, batch=16, lr=3e-3, smoothing=0.0,
                threads=1, arch="strided", teacher=tmp_path / "teacher.pt", distill_alpha=1.0)
    assert out["teacher"]["alpha"] == 1.0
    student = CellNet(len(classes), arch=ARCHS["strided"])
    student.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=False)["state_dict"])
    after = kl_to(teacher, student.eval(), xt)
    assert after < 0.5 * before, (before, after)
