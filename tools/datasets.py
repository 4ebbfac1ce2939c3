"""Dataset readers: every source is mapped onto ONE class scheme, the 15 codes of
AML-Cytomorphology_LMU plus PLT (platelets, not a leukocyte).

A sample is (path, source, labels, md5): `labels` is a list of codes; more than
one code is a *partial label* (the cell is one of them, we do not know which).
The split is a pure function of the file's md5, so identical files always land
in the same split, whichever folder or source they came from.

Readers:
- `read_shared(root)`: the shared layout `pbc/<folder>/*.jpg` + `lmu/<CODE>/*.jpg`;
- `read_lmu_tree(root)`: the full AML-Cytomorphology_LMU tree from TCIA,
  `<root>/<CODE>/<file>.tiff` with the 15 codes as folder names;
- `read_tree(root, source)`: a plain `<root>/<class>/<image>` tree, class being a
  code or a PBC folder name.
See tools/README.md for the mapping tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import CACHE, PipelineError, data_root, file_md5, read_json, write_json

# The master order: the 15 LMU codes (alphabetical, as in abbreviations.txt), then PLT.
MASTER = ["BAS", "EBO", "EOS", "KSC", "LYA", "LYT", "MMZ", "MOB", "MON", "MYB", "MYO", "NGB", "NGS", "PMB", "PMO", "PLT"]
NAMES = {
    "BAS": "Basophil",
    "EBO": "Erythroblast",
    "EOS": "Eosinophil",
    "KSC": "Smudge cell",
    "LYA": "Lymphocyte (atypical)",
    "LYT": "Lymphocyte (typical)",
    "MMZ": "Metamyelocyte",
    "MOB": "Monoblast",
    "MON": "Monocyte",
    "MYB": "Myelocyte",
    "MYO": "Myeloblast",
    "NGB": "Neutrophil (band)",
    "NGS": "Neutrophil (segmented)",
    "PMB": "Promyelocyte (bilobed)",
    "PMO": "Promyelocyte",
    "PLT": "Platelet",
}
# Erythroblasts are nucleated red cells, not leukocytes, but a differential counts
# them (per 100 WBC) and they are found like leukocytes (stained nucleus): counted.
NON_LEUKOCYTES = {"PLT"}
BLAST_CLASSES = ["MYO", "MOB"]
NORMAL_CLASSES = ["BAS", "EOS", "LYT", "MON", "NGB", "NGS"]

# PBC folder -> label set when the file prefix says nothing more specific.
PBC_FOLDERS = {
    "basophil": ["BAS"],
    "eosinophil": ["EOS"],
    "erythroblast": ["EBO"],
    "lymphocyte": ["LYT"],
    "monocyte": ["MON"],
    "platelet": ["PLT"],
    "neutrophil": ["NGB", "NGS"],  # unspecified neutrophil: segmented or band
    "ig": ["MMZ", "MYB", "PMO"],  # unspecified immature granulocyte
}
# PBC file prefix (text before the first '_') -> label set.
PBC_PREFIXES = {
    "BA": ["BAS"],
    "EO": ["EOS"],
    "ERB": ["EBO"],
    "LY": ["LYT"],
    "MO": ["MON"],
    "PLATELET": ["PLT"],
    "SNE": ["NGS"],
    "BNE": ["NGB"],
    "NEUTROPHIL": ["NGB", "NGS"],
    "MMY": ["MMZ"],
    "MY": ["MYB"],
    "PMY": ["PMO"],
    "IG": ["MMZ", "MYB", "PMO"],
}
# Code -> PBC folder, for scoring predictions on PBC cells (None: no PBC class).
CODE_TO_PBC = {
    "BAS": "basophil",
    "EOS": "eosinophil",
    "EBO": "erythroblast",
    "LYT": "lymphocyte",
    "LYA": "lymphocyte",
    "MON": "monocyte",
    "PLT": "platelet",
    "NGS": "neutrophil",
    "NGB": "neutrophil",
    "MMZ": "ig",
    "MYB": "ig",
    "PMO": "ig",
    "PMB": "ig",
    "MYO": None,
    "MOB": None,
    "KSC": None,
}
PBC_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}

# Scale of each source's crops (µm per pixel, as shared: halved from the published
# files), for the physical-window preprocessing. Measured with the detector's own
# red-cell estimate (the one `analyze` uses on a field) over the source's train
# crops: median of the crops where red cells gave an estimate
# (`python tools/datasets.py --measure-scale`). PBC: CellaVision DM96;
# LMU: the M8 scanner at 100x oil. A tree added with --tree/--lmu-tree takes the
# scale of the source it names.
SOURCE_UM_PER_PX = {"pbc": 0.184, "lmu": 0.138}
DEFAULT_SEED = 2019
VAL_PERCENT = 20


@dataclass
class Sample:
    path: str
    source: str
    labels: list[str]
    md5: str
    folder: str = ""  # original class folder (for reports)
    split: str = field(default="")
    # Augmented copies: the scale they are prepared at, relative to the source's
    # (a calibration a few percent off must not change the call).
    scale_jitter: float = 1.0

    @property
    def partial(self) -> bool:
        return len(self.labels) > 1

    @property
    def um_per_px(self) -> float | None:
        um = SOURCE_UM_PER_PX.get(self.source)
        return um * self.scale_jitter if um else None

    @property
    def key(self) -> str:
        """Label-set key, e.g. 'NGS' or 'NGB|NGS'."""
        return "|".join(self.labels)


def split_of(md5: str, seed: int = DEFAULT_SEED) -> str:
    h = hashlib.md5(f"{seed}:{md5}".encode()).hexdigest()
    return "val" if int(h[:8], 16) % 100 < VAL_PERCENT else "train"


def _order(codes) -> list[str]:
    codes = set(codes)
    unknown = codes - set(MASTER)
    if unknown:
        raise PipelineError(f"unknown class codes {sorted(unknown)}")
    return [c for c in MASTER if c in codes]


# md5 of file bytes, cached by (path, size, mtime) so reruns do not reread 19k files.
_MD5_CACHE_FILE = CACHE / "md5.json"
_md5_cache: dict | None = None


def _md5(path: Path) -> str:
    global _md5_cache
    if _md5_cache is None:
        _md5_cache = read_json(_MD5_CACHE_FILE) if _MD5_CACHE_FILE.is_file() else {}
    st = path.stat()
    k = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    v = _md5_cache.get(k)
    if v is None:
        v = file_md5(path)
        _md5_cache[k] = v
    return v


def save_md5_cache() -> None:
    if _md5_cache is not None:
        write_json(_MD5_CACHE_FILE, _md5_cache)


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def pbc_labels(folder: str, filename: str) -> list[str]:
    """Label set of a PBC image from its folder and file prefix."""
    prefix = filename.split("_")[0].upper()
    if prefix in PBC_PREFIXES:
        labels = PBC_PREFIXES[prefix]
        # A prefix must agree with its folder (e.g. MY_ in ig/): guard against surprises.
        if not set(labels) <= set(PBC_FOLDERS[folder]):
            raise PipelineError(f"PBC file {folder}/{filename}: prefix {prefix} does not belong in folder {folder}")
        return list(labels)
    return list(PBC_FOLDERS[folder])


def read_pbc(pbc: Path, source: str = "pbc") -> list[Sample]:
    out = []
    for folder in sorted(PBC_FOLDERS):
        d = pbc / folder
        if not d.is_dir():
            raise PipelineError(f"PBC folder {d} missing")
        for p in _images(d):
            out.append(Sample(str(p), source, _order(pbc_labels(folder, p.name)), _md5(p), folder))
    return out


def read_lmu_tree(root: Path, source: str = "lmu") -> list[Sample]:
    """`<root>/<CODE>/<image>` with LMU codes as folder names (TCIA layout: .tiff;
    the shared layout holds .jpg re-encodes of MYO and NGS). Folders that are not
    an LMU code are ignored (reported)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"LMU tree {root} not found")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        code = d.name.upper()
        if code not in MASTER or code == "PLT":
            print(f"note: {d} is not an LMU class folder, ignored", file=sys.stderr)
            continue
        for p in _images(d):
            out.append(Sample(str(p), source, [code], _md5(p), d.name))
    if not out:
        raise PipelineError(f"LMU tree {root} holds no images in <CODE>/ folders")
    return out


def read_tree(root: Path, source: str) -> list[Sample]:
    """A plain `<root>/<class>/<image>` tree, class being a code (BAS, NGS, ...) or a
    PBC folder name (neutrophil, ig, ...; PBC file prefixes are honoured)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"image tree {root} not found")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        name = d.name
        for p in _images(d):
            if name.upper() in MASTER:
                labels = [name.upper()]
            elif name.lower() in PBC_FOLDERS:
                labels = pbc_labels(name.lower(), p.name)
            else:
                raise PipelineError(f"{d}: folder name {name!r} is neither a class code nor a PBC folder name")
            out.append(Sample(str(p), source, _order(labels), _md5(p), name))
    if not out:
        raise PipelineError(f"image tree {root} holds no images in <class>/ folders")
    return out


def read_shared(root: Path | None = None) -> list[Sample]:
    """The shared layout under LEUKOSCOPE_DATA: pbc/ (8 folders) and lmu/ (MYO, NGS)."""
    root = Path(root) if root else data_root()
    for sub in ("pbc", "lmu"):
        if not (root / sub).is_dir():
            raise PipelineError(f"{root / sub} missing: is LEUKOSCOPE_DATA={root} the shared data folder?")
    return read_pbc(root / "pbc") + read_lmu_tree(root / "lmu")


def load_all(extra_lmu: list[str] = (), extra_trees: list[str] = (), seed: int = DEFAULT_SEED) -> list[Sample]:
    """All samples with their split. extra_lmu: TCIA LMU trees; extra_trees: plain
    trees as 'PATH' or 'SOURCE=PATH'. Duplicated files (same md5) are kept once,
    first source wins (shared layout first)."""
    samples = read_shared()
    for p in extra_lmu:
        samples += read_lmu_tree(Path(p), "lmu")
    for t in extra_trees:
        src, _, path = t.rpartition("=")
        samples += read_tree(Path(path), src or Path(path).name)
    save_md5_cache()
    seen: dict[str, Sample] = {}
    out = []
    for s in samples:
        first = seen.get(s.md5)
        if first is not None:
            if first.labels != s.labels:
                print(f"note: {s.path} duplicates {first.path} with labels {s.labels} vs {first.labels}: kept the first", file=sys.stderr)
            continue
        seen[s.md5] = s
        s.split = split_of(s.md5, seed)
        out.append(s)
    return out


def model_classes(samples: list[Sample]) -> list[str]:
    """Classes of the model: codes with at least one definite (single-label) sample,
    in master order."""
    return _order(s.labels[0] for s in samples if not s.partial)


def restrict(samples: list[Sample], classes: list[str]) -> list[Sample]:
    """Drops label codes the model lacks (and samples left with none)."""
    out = []
    cs = set(classes)
    for s in samples:
        labels = [c for c in s.labels if c in cs]
        if labels:
            out.append(Sample(s.path, s.source, labels, s.md5, s.folder, s.split))
    return out


def group_of(s: Sample) -> str:
    """Sampling/report group: source + label set, e.g. 'lmu:MYO', 'pbc:NGB|NGS'."""
    return f"{s.source}:{s.key}"


def summary(samples: list[Sample]) -> dict:
    c = Counter((group_of(s), s.split) for s in samples)
    groups = sorted({g for g, _ in c})
    return {g: {"train": c[(g, "train")], "val": c[(g, "val")]} for g in groups}


def measure_scale(samples: list[Sample], per_source: int = 400, seed: int = DEFAULT_SEED) -> dict:
    """Median red-cell scale (µm/px) of up to `per_source` train crops of each
    source, by the binary's own estimator (`classify` without --um-per-px)."""
    import random

    from common import MODELS, run_classify

    out = {}
    for src in sorted({s.source for s in samples}):
        pool = sorted((s for s in samples if s.source == src and s.split == "train"), key=lambda s: s.md5)
        pick = random.Random(seed).sample(pool, min(per_source, len(pool)))
        res = run_classify(MODELS / "leukoscope.card.json", [s.path for s in pick])
        res.pop("__model__")
        est = sorted(r["scale"]["um_per_px"] for r in res.values() if r.get("scale", {}).get("source") == "red_cells")
        if not est:
            out[src] = {"n": len(pick), "estimated": 0}
            continue
        q = lambda f: round(est[min(len(est) - 1, int(f * len(est)))], 5)  # noqa: E731, B023 (called in this iteration)
        out[src] = {"n": len(pick), "estimated": len(est), "median": q(0.5), "q25": q(0.25), "q75": q(0.75)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="List the samples, their labels and split.")
    ap.add_argument("--measure-scale", action="store_true",
                    help="median red-cell scale (µm/px) of each source's train crops (SOURCE_UM_PER_PX)")
    ap.add_argument("--lmu-tree", action="append", default=[], help="extra TCIA AML-Cytomorphology_LMU tree")
    ap.add_argument("--tree", action="append", default=[], help="extra plain tree, [SOURCE=]PATH")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", help="write samples as JSON lines")
    a = ap.parse_args(argv)
    samples = load_all(a.lmu_tree, a.tree, a.seed)
    if a.measure_scale:
        print(json.dumps(measure_scale(samples), indent=1))
        return
    print(json.dumps(summary(samples), indent=1))
    print("model classes:", " ".join(model_classes(samples)))
    if a.out:
        with open(a.out, "w") as f:
            for s in samples:
                f.write(json.dumps(s.__dict__) + "\n")


if __name__ == "__main__":
    main()
