"""Label mapping: PBC folders and file prefixes, LMU folders and plain trees onto the
16 class codes (datasets.py), predictions back onto PBC folders (evaluate.py) and the
call a person sees on the jhh cells (crosslab.py). No data folder, no binary, no torch:
the trees are made under tmp_path."""

from __future__ import annotations

import hashlib

import pytest

import crosslab
import datasets as ds
import evaluate
from common import PipelineError


@pytest.fixture(autouse=True)
def _no_md5_cache(monkeypatch):
    # The readers hash every file through a cache kept in tools/cache/md5.json: start
    # each test from an empty one in memory (nothing is read or written there).
    monkeypatch.setattr(ds, "_md5_cache", {})


def _touch(path, data: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or path.name.encode())


# ------------------------------------------------------------------ the code tables


def test_master_order_is_the_15_lmu_codes_then_plt():
    assert len(ds.MASTER) == 16 and len(set(ds.MASTER)) == 16
    assert ds.MASTER[:15] == sorted(ds.MASTER[:15])
    assert ds.MASTER[-1] == "PLT"
    assert set(ds.NAMES) == set(ds.MASTER)
    assert ds.NON_LEUKOCYTES == {"PLT"}
    assert set(ds.BLAST_CLASSES) == {"MYO", "MOB"}


def test_every_pbc_folder_code_scores_back_to_its_folder():
    # A cell of PBC folder F labelled with code C, predicted C, must count as F in the
    # 8-class PBC score: CODE_TO_PBC inverts PBC_FOLDERS.
    assert sorted(ds.PBC_FOLDERS) == ds.PBC_CLASSES
    for folder, codes in ds.PBC_FOLDERS.items():
        for code in codes:
            assert ds.CODE_TO_PBC[code] == folder, (folder, code)
    assert set(ds.CODE_TO_PBC) == set(ds.MASTER)
    assert {v for v in ds.CODE_TO_PBC.values() if v} == set(ds.PBC_CLASSES)
    for code in ("MYO", "MOB", "KSC"):  # no PBC class: wrong on any PBC cell
        assert ds.CODE_TO_PBC[code] is None


# ------------------------------------------------------------------ PBC file names


@pytest.mark.parametrize(
    "folder, filename, labels",
    [
        ("basophil", "BA_100.jpg", ["BAS"]),
        ("eosinophil", "EO_7.jpg", ["EOS"]),
        ("erythroblast", "ERB_31.jpg", ["EBO"]),
        ("lymphocyte", "LY_2.jpg", ["LYT"]),
        ("monocyte", "MO_901.jpg", ["MON"]),
        ("platelet", "PLATELET_5.jpg", ["PLT"]),
        ("neutrophil", "SNE_12.jpg", ["NGS"]),
        ("neutrophil", "BNE_13.jpg", ["NGB"]),
        ("neutrophil", "NEUTROPHIL_14.jpg", ["NGB", "NGS"]),
        ("ig", "MMY_1.jpg", ["MMZ"]),
        ("ig", "MY_2.jpg", ["MYB"]),
        ("ig", "PMY_3.jpg", ["PMO"]),
        ("ig", "IG_4.jpg", ["MMZ", "MYB", "PMO"]),
        ("neutrophil", "sne_12.jpg", ["NGS"]),  # the prefix is read case-blind
    ],
)
def test_pbc_prefix_decides(folder, filename, labels):
    assert ds.pbc_labels(folder, filename) == labels


@pytest.mark.parametrize(
    "folder, filename, labels",
    [
        ("monocyte", "12345.jpg", ["MON"]),
        ("neutrophil", "cell-9.jpg", ["NGB", "NGS"]),  # unspecified: partial label
        ("ig", "x.jpg", ["MMZ", "MYB", "PMO"]),
    ],
)
def test_pbc_folder_is_the_fallback(folder, filename, labels):
    assert ds.pbc_labels(folder, filename) == labels


@pytest.mark.parametrize(
    "folder, filename",
    [("monocyte", "LY_1.jpg"), ("ig", "SNE_2.jpg"), ("neutrophil", "MY_3.jpg"), ("basophil", "PLATELET_4.jpg")],
)
def test_pbc_prefix_from_another_folder_raises(folder, filename):
    with pytest.raises(PipelineError, match="does not belong"):
        ds.pbc_labels(folder, filename)


def test_pbc_labels_are_copies():
    labels = ds.pbc_labels("ig", "IG_1.jpg")
    labels.append("BAS")
    assert ds.PBC_PREFIXES["IG"] == ["MMZ", "MYB", "PMO"]


# ------------------------------------------------------------------ codes and trees


def test_order_sorts_into_master_order_and_rejects_unknown_codes():
    assert ds._order(["PLT", "NGS", "BAS", "NGS"]) == ["BAS", "NGS", "PLT"]
    with pytest.raises(PipelineError, match="unknown class codes"):
        ds._order(["NGS", "BLAST"])


def test_read_tree_maps_codes_and_pbc_folder_names(tmp_path):
    _touch(tmp_path / "MYO" / "a.jpg")
    _touch(tmp_path / "ngs" / "b.png")  # a code, any case
    _touch(tmp_path / "neutrophil" / "BNE_1.jpg")
    _touch(tmp_path / "neutrophil" / "NEUTROPHIL_2.jpg")
    _touch(tmp_path / "Monocyte" / "MO_3.tiff")  # a PBC folder name, any case
    _touch(tmp_path / "MYO" / "notes.txt")  # not an image: skipped
    samples = ds.read_tree(tmp_path, "lab3")
    got = {s.path.split("/")[-1]: (s.labels, s.folder, s.source) for s in samples}
    assert got == {
        "a.jpg": (["MYO"], "MYO", "lab3"),
        "b.png": (["NGS"], "ngs", "lab3"),
        "BNE_1.jpg": (["NGB"], "neutrophil", "lab3"),
        "NEUTROPHIL_2.jpg": (["NGB", "NGS"], "neutrophil", "lab3"),
        "MO_3.tiff": (["MON"], "Monocyte", "lab3"),
    }
    a = next(s for s in samples if s.path.endswith("a.jpg"))
    assert a.md5 == hashlib.md5(b"a.jpg").hexdigest()


def test_read_tree_rejects_an_unknown_class_folder(tmp_path):
    _touch(tmp_path / "NGS" / "a.jpg")
    _touch(tmp_path / "macrophage" / "b.jpg")
    with pytest.raises(PipelineError, match="neither a class code nor a PBC folder"):
        ds.read_tree(tmp_path, "lab3")


def test_read_tree_without_images_raises(tmp_path):
    _touch(tmp_path / "NGS" / "readme.txt")
    with pytest.raises(PipelineError, match="holds no images"):
        ds.read_tree(tmp_path, "lab3")


def test_read_lmu_tree_takes_code_folders_only(tmp_path):
    _touch(tmp_path / "MYO" / "MYO_0001.tiff")
    _touch(tmp_path / "ngs" / "NGS_0001.jpg")
    _touch(tmp_path / "PLT" / "p.jpg")  # PLT is not an LMU class
    _touch(tmp_path / "extra" / "e.jpg")
    samples = ds.read_lmu_tree(tmp_path)
    assert sorted((s.labels[0], s.folder, s.source) for s in samples) == [("MYO", "MYO", "lmu"), ("NGS", "ngs", "lmu")]


def test_read_pbc_needs_all_eight_folders_and_labels_each_file(tmp_path):
    names = {
        "basophil": "BA_1.jpg",
        "eosinophil": "EO_1.jpg",
        "erythroblast": "ERB_1.jpg",
        "ig": "IG_1.jpg",
        "lymphocyte": "LY_1.jpg",
        "monocyte": "MO_1.jpg",
        "neutrophil": "SNE_1.jpg",
        "platelet": "PLATELET_1.jpg",
    }
    for folder, name in names.items():
        _touch(tmp_path / folder / name)
    samples = ds.read_pbc(tmp_path)
    assert [(s.folder, s.labels) for s in samples] == [
        ("basophil", ["BAS"]),
        ("eosinophil", ["EOS"]),
        ("erythroblast", ["EBO"]),
        ("ig", ["MMZ", "MYB", "PMO"]),
        ("lymphocyte", ["LYT"]),
        ("monocyte", ["MON"]),
        ("neutrophil", ["NGS"]),
        ("platelet", ["PLT"]),
    ]
    (tmp_path / "platelet" / "PLATELET_1.jpg").unlink()
    (tmp_path / "platelet").rmdir()
    with pytest.raises(PipelineError, match="PBC folder .* missing"):
        ds.read_pbc(tmp_path)


# ------------------------------------------------------------------ samples, split, classes


def test_sample_properties():
    s = ds.Sample("x.jpg", "pbc", ["NGB", "NGS"], "0" * 32)
    assert s.partial and s.key == "NGB|NGS" and ds.group_of(s) == "pbc:NGB|NGS"
    assert s.um_per_px == pytest.approx(0.184)
    t = ds.Sample("y.jpg", "lmu", ["MYO"], "1" * 32, scale_jitter=1.1)
    assert not t.partial and t.key == "MYO"
    assert t.um_per_px == pytest.approx(0.138 * 1.1)
    assert ds.Sample("z.jpg", "jhh", ["MON"], "2" * 32).um_per_px is None


def test_split_is_the_documented_function_of_the_file_md5():
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(2000)]
    for m in md5s[:200]:
        h = int(hashlib.md5(f"2019:{m}".encode()).hexdigest()[:8], 16)
        assert ds.split_of(m) == ("val" if h % 100 < 20 else "train")
    val = sum(ds.split_of(m) == "val" for m in md5s) / len(md5s)
    assert 0.17 < val < 0.23
    assert [ds.split_of(m, 7) for m in md5s] != [ds.split_of(m) for m in md5s]


def test_model_classes_come_from_single_label_samples_and_restrict_drops_the_rest():
    samples = [
        ds.Sample("a", "pbc", ["NGS"], "a"),
        ds.Sample("b", "pbc", ["NGB", "NGS"], "b"),  # partial: names no class by itself
        ds.Sample("c", "lmu", ["MYO"], "c"),
        ds.Sample("d", "pbc", ["MMZ", "MYB", "PMO"], "d"),
        ds.Sample("e", "pbc", ["BAS"], "e"),
    ]
    classes = ds.model_classes(samples)
    assert classes == ["BAS", "MYO", "NGS"]
    kept = ds.restrict(samples, classes)
    assert [(s.path, s.labels) for s in kept] == [("a", ["NGS"]), ("b", ["NGS"]), ("c", ["MYO"]), ("e", ["BAS"])]


# ------------------------------------------------------------------ scoring and calls


def test_pbc_score_maps_predictions_back_to_pbc_folders():
    samples = [
        ds.Sample("1", "pbc", ["NGS"], "1", "neutrophil"),
        ds.Sample("2", "pbc", ["NGB", "NGS"], "2", "neutrophil"),
        ds.Sample("3", "pbc", ["MMZ", "MYB", "PMO"], "3", "ig"),
        ds.Sample("4", "pbc", ["LYT"], "4", "lymphocyte"),
        ds.Sample("5", "pbc", ["MON"], "5", "monocyte"),
        ds.Sample("6", "lmu", ["MYO"], "6", "MYO"),  # not a PBC cell: left out
    ]
    pred = ["NGB", "NGS", "PMB", "LYA", "MYO", "MYO"]
    f = evaluate.pbc_figures(samples, pred)
    assert f["n"] == 5
    assert f["accuracy"] == 0.8  # all but the monocyte called a blast
    assert f["called_blast"] == 1
    assert f["per_class"]["monocyte"]["recall"] == 0.0
    assert f["per_class"]["neutrophil"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n": 2}


def test_blast_figures_on_lmu_cells():
    samples = [
        ds.Sample("1", "lmu", ["MYO"], "1"),
        ds.Sample("2", "lmu", ["MYO"], "2"),
        ds.Sample("3", "lmu", ["NGS"], "3"),
        ds.Sample("4", "lmu", ["NGS"], "4"),
        ds.Sample("5", "pbc", ["NGS"], "5"),  # PBC: not in the LMU blast figures
    ]
    f = evaluate.blast_figures(samples, ["MOB", "NGS", "MYO", "NGB", "MYO"])
    assert (f["sensitivity"], f["n_blast"]) == (0.5, 2)
    assert (f["specificity"], f["n_nonblast"]) == (0.5, 2)
    assert f["ngs_called_neutrophil"] == 0.5 and f["ngs_predictions"] == {"MYO": 1, "NGB": 1}


@pytest.mark.parametrize(
    "res, call",
    [
        ({"class": "MYO", "identified": True}, "MYO"),
        ({"class": "NGS"}, "NGS"),
        ({"class": "MYO", "identified": False}, "UNID"),
        ({"error": "cannot read", "class": "MYO"}, "ERR"),
    ],
)
def test_crosslab_call_of(res, call):
    assert crosslab.call_of(res, {"MYO", "MOB"}) == call


def test_jhh_figures_count_blasts_and_normals_per_patient():
    import numpy as np

    manifest = [
        {"abs": "/1", "code": "BLAST", "patient": "p1"},
        {"abs": "/2", "code": "BLAST", "patient": "p1"},
        {"abs": "/3", "code": "BLAST", "patient": "p2"},
        {"abs": "/4", "code": "LYT", "patient": "p2"},
        {"abs": "/5", "code": "NGS", "patient": "p2"},
    ]
    calls = {"/1": "MYO", "/2": "LYT", "/3": "MOB", "/4": "MYO", "/5": "NGS"}
    f = crosslab.jhh_figures(calls, manifest, {"MYO", "MOB"}, np.random.default_rng(0))
    assert f["blast_called_blast"]["value"] == pytest.approx(2 / 3) and f["blast_called_blast"]["n"] == 3
    assert f["blast_called_normal"]["value"] == pytest.approx(1 / 3)
    assert f["normal_called_blast"]["value"] == 0.5 and f["normal_called_blast"]["n"] == 2
    assert f["LYT_correct"]["value"] == 0.0 and f["NGS_correct"]["value"] == 1.0
    assert f["calls_by_true_class"]["BLAST"] == {"MYO": 1, "LYT": 1, "MOB": 1}
