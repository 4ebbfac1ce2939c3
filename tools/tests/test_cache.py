"""The preprocessing cache's pruning (common.prune_cache): least recently used entries
go first, entries in use never, and stale binary snapshots are dropped. Files under
tmp_path stand in for cached tensors."""

from __future__ import annotations

import os

import common


def make_entry(root, sub, key, size, age_s):
    d = root / sub
    d.mkdir(parents=True, exist_ok=True)
    npy = d / f"{key}.npy"
    npy.write_bytes(b"\0" * size)
    npy.with_suffix(".json").write_text("{}")
    npy.with_suffix(".list.txt").write_text("a\n")
    t = 1_000_000 - age_s
    os.utime(npy, (t, t))
    return npy


def test_prune_removes_oldest_first_and_spares_kept(tmp_path):
    old = make_entry(tmp_path, "pre", "old", 1000, age_s=300)
    kept = make_entry(tmp_path, "pre-aug", "kept", 1000, age_s=200)
    mid = make_entry(tmp_path, "pre", "mid", 1000, age_s=100)
    new = make_entry(tmp_path, "pre-robust", "new", 1000, age_s=0)
    writing = tmp_path / "pre" / "w.tmp.npy"
    writing.write_bytes(b"\0" * 5000)

    freed = common.prune_cache(keep=[kept], max_bytes=2100, root=tmp_path)

    # 4 entries of ~1006 bytes, cap 2100: the two oldest not kept (old, mid) go.
    assert not old.exists() and not old.with_suffix(".json").exists() and not old.with_suffix(".list.txt").exists()
    assert not mid.exists()
    assert kept.exists() and new.exists() and writing.exists()
    assert freed == 2 * (1000 + 2 + 2)


def test_prune_under_the_cap_deletes_nothing(tmp_path):
    a = make_entry(tmp_path, "pre", "a", 1000, age_s=10)
    assert common.prune_cache(max_bytes=10_000, root=tmp_path) == 0
    assert a.exists()


def test_prune_keeps_the_two_newest_binary_snapshots(tmp_path):
    snaps = []
    for i in range(4):
        d = tmp_path / "bin" / f"s{i}"
        d.mkdir(parents=True)
        (d / "leukoscope").write_bytes(b"x" * 10)
        os.utime(d, (1000 + i, 1000 + i))
        snaps.append(d)
    common.prune_cache(max_bytes=10**12, root=tmp_path)
    assert [d.exists() for d in snaps] == [False, False, True, True]
