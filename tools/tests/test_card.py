"""Card writing (make_card.py): the JSON contract the Rust runtime reads. The run
folders are made under tmp_path with stand-in model files (the card only hashes and
copies them), so nothing is trained, exported or run."""

from __future__ import annotations

import hashlib
import json

import pytest

import make_card as mc
from common import REPO, PipelineError, read_json, sha256_file, write_json

SPEC = {
    "method": "physical-window-lab-standardised-v2",
    "min_nucleus_od": 0.1,
    "size": 96,
    "std_floor": 2.0,
    "window_factor": 1.7,
    "window_um": 24.0,
}
CLASSES = ["BAS", "EOS", "LYT", "MON", "MYO", "NGB", "NGS", "PLT"]
# What the runtime reads at the top of the card.
REQUIRED = {"name", "file", "sha256", "input", "classes", "blast_classes", "normal_classes", "min_confidence",
            "precision_by_arch", "extra"}


def make_run(run_dir, *, classes=CLASSES, spec=SPEC, init=None, epochs=3, quant=True):
    """A finished run as train/quantize leave it: two model files and their json."""
    run_dir.mkdir(parents=True)
    (run_dir / "model-int8.onnx").write_bytes(b"int8 model " + run_dir.name.encode() + bytes(range(256)) * 5000)
    (run_dir / "model-f32.onnx").write_bytes(b"f32 model " + run_dir.name.encode())
    info = {"classes": classes, "epochs": epochs, "lr": 2e-3, "seed": 2019, "command": f"train {run_dir.name}",
            "arch": "vgg", "macs": 82_000_000, "params": 469_000}
    if init:
        info["init"] = {"from": str(init)}
    write_json(run_dir / "train.json", info)
    write_json(run_dir / "spec.json", spec)
    if quant:
        write_json(run_dir / "quant.json", {"calibration": 400})
    return run_dir


def test_card_dict_classes_input_and_contract():
    card = mc.card_dict(classes=CLASSES, spec=SPEC, model_file="m.onnx", model_sha256="ab" * 32)
    assert REQUIRED <= set(card)
    assert [c["code"] for c in card["classes"]] == CLASSES
    assert card["classes"][0] == {"code": "BAS", "name": "Basophil", "leukocyte": True}
    assert card["classes"][-1] == {"code": "PLT", "name": "Platelet", "leukocyte": False}
    assert card["input"]["shape"] == [1, 3, 96, 96]
    assert card["input"]["preprocessing"] == SPEC
    assert (card["file"], card["sha256"]) == ("m.onnx", "ab" * 32)
    assert card["blast_classes"] == ["MYO", "MOB"]
    assert card["normal_classes"] == ["BAS", "EOS", "LYT", "MON", "NGB", "NGS"]
    assert card["min_confidence"] == 0.5
    # No f32 file: nothing to choose per architecture, no ood rule given.
    assert card["precision_by_arch"] == {} and card["extra"]["f32_model"] is None and "ood" not in card
    # Physical preprocessing: the sources' scales and the window are written down.
    assert card["extra"]["source_um_per_px"] == {"pbc": 0.184, "lmu": 0.138}
    assert "24.0 um in 96 px (0.250 um per input pixel)" in card["extra"]["physical_scale"]
    assert json.loads(json.dumps(card)) == card  # plain JSON all through


def test_card_dict_f32_ood_and_nucleus_scaled_preprocessing():
    spec = {"method": "nucleus-window", "size": 64, "window_factor": 1.7}
    card = mc.card_dict(classes=["MYO", "NGS"], spec=spec, model_file="i.onnx", model_sha256="0" * 64,
                        f32_file="f.onnx", f32_sha256="1" * 64, ood={"max_energy": -2.5, "warn_percent": 10.0, "p": 99})
    assert card["input"]["shape"] == [1, 3, 64, 64]
    assert card["extra"]["f32_model"] == {"file": "f.onnx", "sha256": "1" * 64}
    assert card["precision_by_arch"] == {"x86_64": "f32"}
    assert card["ood"] == {"max_energy": -2.5, "warn_percent": 10.0}
    assert "source_um_per_px" not in card["extra"]
    assert "no absolute size" in card["extra"]["physical_scale"]


def test_card_dict_rejects_an_unknown_class():
    with pytest.raises(KeyError):
        mc.card_dict(classes=["NGS", "BLAST"], spec=SPEC, model_file="m.onnx", model_sha256="0" * 64)


def test_write_card_hashes_and_copies_the_models(tmp_path):
    run = make_run(tmp_path / "runs" / "v5")
    out = tmp_path / "models"
    path = mc.write_card(out, run)
    assert path == out / mc.CARD_NAME
    card = read_json(path)
    assert REQUIRED <= set(card)
    assert card["name"] == "leukoscope-cnn-v5"
    assert card["file"] == mc.INT8_NAME
    int8 = out / card["file"]
    assert int8.read_bytes() == (run / "model-int8.onnx").read_bytes()
    assert card["sha256"] == hashlib.sha256(int8.read_bytes()).hexdigest()
    f32 = card["extra"]["f32_model"]
    assert f32["file"] == mc.F32_NAME
    assert f32["sha256"] == hashlib.sha256((out / mc.F32_NAME).read_bytes()).hexdigest()
    assert f32["sha256"] != card["sha256"]
    assert [c["code"] for c in card["classes"]] == CLASSES
    assert card["input"]["preprocessing"] == SPEC
    assert card["extra"]["quantization"] == {"calibration": 400}
    assert card["extra"]["training"]["epochs"] == 3 and card["extra"]["training"]["lineage"] is None
    assert card["extra"]["metrics"] is None and "ood" not in card  # no report given
    assert not list(out.glob("*.tmp"))  # written atomically


def test_write_card_round_trip_equals_card_dict(tmp_path):
    run = make_run(tmp_path / "r1", quant=False)
    path = mc.write_card(tmp_path / "out", run)
    want = mc.card_dict(
        classes=CLASSES,
        spec=SPEC,
        model_file=mc.INT8_NAME,
        model_sha256=sha256_file(run / "model-int8.onnx"),
        f32_file=mc.F32_NAME,
        f32_sha256=sha256_file(run / "model-f32.onnx"),
        train_info={**read_json(run / "train.json"), "model_name": "leukoscope-cnn-r1"},
    )
    assert read_json(path) == want
    # Writing it again gives the same bytes.
    first = path.read_bytes()
    mc.write_card(tmp_path / "out", run)
    assert path.read_bytes() == first


def test_write_card_in_place_points_at_the_run_files(tmp_path):
    run = make_run(tmp_path / "r2")
    card = read_json(mc.write_card(run, run, copy=False, card_name="c.json"))
    assert card["file"] == "model-int8.onnx"
    assert card["sha256"] == sha256_file(run / "model-int8.onnx")
    assert not (run / mc.INT8_NAME).exists()
    with pytest.raises(PipelineError, match="out_dir == run_dir"):
        mc.write_card(tmp_path / "elsewhere", run, copy=False)


def test_write_card_needs_a_finished_run(tmp_path):
    run = make_run(tmp_path / "r3")
    (run / "model-int8.onnx").unlink()
    with pytest.raises(PipelineError, match="model-int8.onnx missing"):
        mc.write_card(tmp_path / "out", run)
    assert not (tmp_path / "out").exists()


def test_write_card_records_the_lineage_of_continued_runs(tmp_path):
    a = make_run(tmp_path / "v6", epochs=20)
    b = make_run(tmp_path / "v7", init=a / "model.pt", epochs=10)
    c = make_run(tmp_path / "v9", init=b / "model.pt", epochs=12)
    card = read_json(mc.write_card(tmp_path / "out", c))
    lineage = card["extra"]["training"]["lineage"]
    assert [e["run"] for e in lineage] == ["v6", "v7", "v9"]  # oldest first
    assert [e["epochs"] for e in lineage] == [20, 10, 12]
    assert card["extra"]["training"]["epochs"] == 42
    assert "mild selection on val" in card["extra"]["split"]


def test_card_metrics_keeps_the_figures_the_card_needs():
    per_class = {"MYO": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "n": 10, "extra": 1}}
    fig = {"accuracy": 0.91, "macro_f1": 0.88, "pbc": {"macro_f1": 0.97}, "lmu_blast": {"sensitivity": 0.95},
           "per_class": per_class}
    report = {"figures": {"f32": fig, "int8": {**fig, "accuracy": 0.9}}, "n_val": 123,
              "robustness": {"int8": {"pbc_stain": 0.9}}}
    m = mc.card_metrics(report)
    assert m["f32"]["val_accuracy"] == 0.91 and m["int8"]["val_accuracy"] == 0.9
    assert m["int8"]["pbc_macro_f1"] == 0.97
    assert m["f32"]["per_class"] == {"MYO": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "n": 10}}
    assert m["int8"]["robustness"] == {"pbc_stain": 0.9} and m["f32"]["robustness"] is None
    assert m["n_val"] == 123 and "tract_int8" not in m


def test_sha256_file_and_json_round_trip(tmp_path):
    blob = bytes(range(256)) * 9000  # > 2 MiB: read in several chunks
    (tmp_path / "b.bin").write_bytes(blob)
    assert sha256_file(tmp_path / "b.bin") == hashlib.sha256(blob).hexdigest()
    obj = {"classes": ["MYO", "NGS"], "µm": 0.25, "nested": {"a": [1, 2.5, None, True]}}
    write_json(tmp_path / "sub" / "x.json", obj)
    assert read_json(tmp_path / "sub" / "x.json") == obj
    assert (tmp_path / "sub" / "x.json").read_text().endswith("}\n")


def test_shipped_card_is_what_make_card_writes():
    # models/leukoscope.card.json (what the runtime loads) agrees with the code that
    # writes cards on everything outside `extra`, and names its files by their sha256.
    models = REPO / "models"
    shipped = read_json(models / mc.CARD_NAME)
    f32 = shipped["extra"]["f32_model"]
    assert sha256_file(models / shipped["file"]) == shipped["sha256"]
    assert sha256_file(models / f32["file"]) == f32["sha256"]
    again = mc.card_dict(
        classes=[c["code"] for c in shipped["classes"]],
        spec=shipped["input"]["preprocessing"],
        model_file=shipped["file"],
        model_sha256=shipped["sha256"],
        f32_file=f32["file"],
        f32_sha256=f32["sha256"],
        train_info={"model_name": shipped["name"]},
        ood=shipped.get("ood"),
    )
    assert {k: v for k, v in again.items() if k != "extra"} == {k: v for k, v in shipped.items() if k != "extra"}
    mapping = shipped["extra"]["class_mapping"]
    assert mapping["pbc_folders"] == again["extra"]["class_mapping"]["pbc_folders"]
    assert mapping["pbc_file_prefixes"] == again["extra"]["class_mapping"]["pbc_file_prefixes"]
