"""Shared helpers of the leukoscope training tools: paths, the Rust binary, the
preprocessing cache, hashing and JSON I/O.

The model's preprocessing lives in Rust (`leukoscope preprocess`); this module only
runs the binary and caches its output. Python never re-implements it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
CACHE = TOOLS / "cache"
RUNS = TOOLS / "runs"
MODELS = REPO / "models"


class PipelineError(RuntimeError):
    """A failure the user must act on (missing data, binary, failed step)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def data_root() -> Path:
    """The ONE data location setting: env LEUKOSCOPE_DATA (default ../shared/data
    relative to the repository root). Missing data is an error, never skipped."""
    raw = os.environ.get("LEUKOSCOPE_DATA")
    root = Path(raw) if raw else REPO / ".." / "shared" / "data"
    if not root.is_absolute():
        root = REPO / root
    root = root.resolve()
    if not root.is_dir():
        how = f"LEUKOSCOPE_DATA={raw}" if raw else "the default ../shared/data (relative to the repository root)"
        raise PipelineError(
            f"data directory {root} not found ({how}). Set LEUKOSCOPE_DATA to the folder holding pbc/, lmu/ and bccd/."
        )
    return root


def binary_path() -> Path:
    raw = os.environ.get("LEUKOSCOPE_BIN")
    return Path(raw).resolve() if raw else REPO / "target" / "release" / "leukoscope"


_SNAPSHOT: Path | None = None


def ensure_binary(build: bool = True) -> Path:
    """Returns the leukoscope binary to use for this whole process, building it
    (`cargo build --release`) when it is missing and LEUKOSCOPE_BIN is not set.

    The binary is snapshotted once per process into tools/cache/bin/<size-mtime>/,
    so that a rebuild of target/release (the Rust side is developed alongside)
    cannot change the preprocessing in the middle of a run: training tensors,
    evaluation and the tract check all come from the same build."""
    global _SNAPSHOT
    if _SNAPSHOT is not None:
        return _SNAPSHOT
    b = binary_path()
    if not b.is_file():
        if os.environ.get("LEUKOSCOPE_BIN") or not build:
            raise PipelineError(f"leukoscope binary {b} not found (set LEUKOSCOPE_BIN or run `cargo build --release`)")
        cargo = shutil.which("cargo")
        if not cargo:
            raise PipelineError(f"leukoscope binary {b} not found and cargo is not on PATH")
        log(f"{b} missing: running cargo build --release (waits if another build holds the lock)")
        r = subprocess.run([cargo, "build", "--release"], cwd=REPO)
        if r.returncode != 0 or not b.is_file():
            raise PipelineError(f"cargo build --release failed (exit {r.returncode})")
    d = CACHE / "bin" / binary_stamp(b).replace(":", "-")
    snap = d / "leukoscope"
    if not snap.is_file():
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"leukoscope.{os.getpid()}.tmp"
        shutil.copy2(b, tmp)  # keeps size and mtime: same stamp
        tmp.replace(snap)
    _SNAPSHOT = snap
    return snap


def binary_stamp(b: Path) -> str:
    st = b.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------
# Preprocessing through the Rust binary, cached.


def _preprocess_chunk(binary: Path, paths: list[str], card: Path | None, cache_dir: Path) -> Path:
    """Runs `leukoscope preprocess` on one list (lines `path` or `path<TAB>µm per
    px`); returns the cached .npy path."""
    listing = "".join(p + "\n" for p in paths)
    spec_key = read_json(card)["input"]["preprocessing"] if card else "default"
    key = hashlib.sha256(
        (listing + "\0" + binary_stamp(binary) + "\0" + json.dumps(spec_key, sort_keys=True)).encode()
    ).hexdigest()[:24]
    npy = cache_dir / f"{key}.npy"
    side = npy.with_suffix(".json")
    if npy.is_file() and side.is_file():
        os.utime(npy)  # marks the entry as used, for prune_cache
        return npy
    cache_dir.mkdir(parents=True, exist_ok=True)
    lst = cache_dir / f"{key}.list.txt"
    lst.write_text(listing)
    tmp = cache_dir / f"{key}.tmp.npy"
    cmd = [str(binary), "preprocess", "--list", str(lst), "--out", str(tmp)]
    if card:
        cmd += ["--card", str(card)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
    if r.returncode not in (0, 1) or not tmp.is_file():
        raise PipelineError(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    tmp.with_suffix(".json").replace(side)
    tmp.replace(npy)
    return npy


# Cache entries this process has used (never pruned while it runs).
_USED: set[Path] = set()


def prune_cache(keep: Iterable[Path] = (), max_bytes: int | None = None, root: Path | None = None) -> int:
    """Deletes the least recently used preprocessing entries (tools/cache/pre*/) until
    they take at most `max_bytes` (default: env LEUKOSCOPE_CACHE_GB, 12 GB), never an
    entry in `keep`; also all binary snapshots but the two newest and the one in use.
    Every rebuild of the binary makes the entries keyed by the old one unreachable, so
    without this the cache grows by ~2 GB per rebuild until the disk is full (it took
    30 GB by session 10). Returns the bytes freed."""
    root = root or CACHE
    if max_bytes is None:
        max_bytes = int(float(os.environ.get("LEUKOSCOPE_CACHE_GB", "12")) * 1e9)
    keep = {Path(k).resolve() for k in keep}
    entries = []  # (last use, bytes, files of the entry, its .npy)
    for npy in root.glob("pre*/*.npy"):
        if npy.name.endswith(".tmp.npy"):
            continue  # another process is writing it
        files = [npy, npy.with_suffix(".json"), npy.with_suffix(".list.txt")]
        size = sum(f.stat().st_size for f in files if f.is_file())
        entries.append((npy.stat().st_mtime, size, files, npy.resolve()))
    total = sum(e[1] for e in entries)
    freed = 0
    for _, size, files, npy in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if npy in keep:
            continue
        for f in files:
            f.unlink(missing_ok=True)
        total -= size
        freed += size
    snaps = sorted((d for d in (root / "bin").glob("*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    in_use = _SNAPSHOT.parent.resolve() if _SNAPSHOT else None
    for d in snaps[:-2]:
        if d.resolve() != in_use:
            freed += sum(f.stat().st_size for f in d.glob("*") if f.is_file())
            shutil.rmtree(d, ignore_errors=True)
    if freed:
        log(f"cache: freed {freed / 1e9:.1f} GB of least recently used entries (cap {max_bytes / 1e9:.0f} GB)")
    return freed


class Prepared:
    """Preprocessed tensors for a list of images, in list order.

    take(idx) -> float32 [n,3,S,S] rows (read from the memory-mapped cache files),
    items: sidecar items, ok: bool [N] (False where the binary could not read the
    image), spec: the sidecar's "preprocessing" object (goes into the card verbatim)."""

    def __init__(self, arrays: list[np.ndarray], items: list[dict], spec: dict):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [a.shape[0] for a in arrays])
        self.items = items
        self.spec = spec
        self.ok = np.array(["error" not in it for it in items], dtype=bool)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx),) + self.arrays[0].shape[1:], dtype=np.float32)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for k, a in enumerate(self.arrays):
            sel = np.nonzero(which == k)[0]
            if len(sel):
                rows = idx[sel] - self.offsets[k]
                order = np.argsort(rows)  # sequential reads from the memmap
                out[sel[order]] = a[rows[order]]
        return out

    @property
    def x(self) -> np.ndarray:
        return self.take(np.arange(len(self)))

    @property
    def errors(self) -> list[dict]:
        return [it for it in self.items if "error" in it]


def preprocess(
    paths: list[str | Path],
    *,
    scales: list[float | None] | None = None,
    cache_sub: str = "pre",
    chunk: int = 2000,
    jobs: int | None = None,
    card: Path | None = None,
    quiet: bool = False,
) -> Prepared:
    """Preprocesses images (absolute paths) with the Rust binary, cached under
    tools/cache/<cache_sub>/ keyed by list content + binary size/mtime + spec.
    Lists are cut into chunks so that a partial change recomputes little and two
    chunks can run at once (`jobs`, default env LEUKOSCOPE_JOBS or 2). `scales`:
    each image's µm per pixel (None: estimated by the binary from red cells)."""
    binary = ensure_binary()
    paths = [str(Path(p).resolve()) for p in paths]
    scales = scales or [None] * len(paths)
    lines = [p if s is None else f"{p}\t{s:.6g}" for p, s in zip(paths, scales)]
    if not paths:
        raise PipelineError("preprocess: empty image list")
    jobs = jobs or int(os.environ.get("LEUKOSCOPE_JOBS", "2"))
    cache_dir = CACHE / cache_sub
    chunks = [lines[i : i + chunk] for i in range(0, len(lines), chunk)]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        npys = list(pool.map(lambda c: _preprocess_chunk(binary, c, card, cache_dir), chunks))
    arrays = [np.load(n, mmap_mode="r") for n in npys]
    sides = [read_json(n.with_suffix(".json")) for n in npys]
    items = [it for s in sides for it in s["items"]]
    spec = sides[0]["preprocessing"]
    if any(s["preprocessing"] != spec for s in sides):
        raise PipelineError("preprocess: chunks disagree on the preprocessing spec (stale cache?)")
    rows = sum(a.shape[0] for a in arrays)
    if rows != len(paths) or len(items) != len(paths):
        raise PipelineError(f"preprocess: expected {len(paths)} rows, got {rows}")
    for want, it in zip(paths, items):
        if Path(it["path"]).resolve() != Path(want):
            raise PipelineError(f"preprocess: sidecar order mismatch at {want} vs {it['path']}")
    _USED.update(npys)  # a training run reads earlier calls' tensors again: keep them all
    prune_cache(keep=_USED)
    p = Prepared(arrays, items, spec)
    if not quiet:
        log(f"preprocessed {len(paths)} images in {time.time() - t0:.1f}s ({len(p.errors)} unreadable)")
    return p


def run_classify(
    card: Path,
    paths: list[str | Path],
    batch: int = 400,
    scales: list[float | None] | None = None,
    precision: str = "auto",
) -> dict[str, dict]:
    """`leukoscope classify --json --model CARD [--um-per-px S]` on images; returns
    {abs path: result}. `scales`: each image's µm per pixel (None: the binary
    estimates it); `precision`: which of the card's files runs (auto, int8,
    f32). Raises when the binary fails for another reason than an unreadable
    image."""
    binary = ensure_binary()
    out: dict[str, dict] = {}
    model = None
    paths = [str(Path(p).resolve()) for p in paths]
    by_scale: dict[float | None, list[str]] = {}
    for p, s in zip(paths, scales or [None] * len(paths)):
        by_scale.setdefault(s, []).append(p)
    jobs = [(s, ps[i : i + batch]) for s, ps in by_scale.items() for i in range(0, len(ps), batch)]
    for scale, chunk in jobs:
        opt = ["--um-per-px", f"{scale:.6g}"] if scale else []
        cmd = [str(binary), "classify", "--json", "--model", str(card), "--precision", precision] + opt + chunk
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
        if r.returncode not in (0, 1) or not r.stdout.strip():
            raise PipelineError(f"leukoscope classify failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        doc = json.loads(r.stdout)
        model = doc["model"]
        for res in doc["results"]:
            out[str(Path(res["path"]).resolve())] = res
    missing = [p for p in paths if p not in out]
    if missing:
        raise PipelineError(f"leukoscope classify returned no result for {len(missing)} images, e.g. {missing[0]}")
    out["__model__"] = model  # type: ignore[assignment]
    return out


def die(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
