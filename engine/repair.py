"""``quiver repair PATH``: what a damaged data directory has lost, and an explicit step to drop
it. Opening never deletes anything; this is where dropping happens, reported first.

Each finding names the file, the problem, the action and what the action loses. Without
``apply`` nothing changes on disk. What can be repaired:
- a write-ahead log with a damaged record: cut at the damage (the records after it are lost);
- a missing or damaged collection manifest: rebuilt from the segment directories (their
  own manifests are checksummed), keeping the newest row of each point;
- a sealed segment that fails its checks: moved to ``quarantine/`` (its points are lost).
A damaged ``config.json`` cannot be guessed back (dimension, metric, index): restore it from
a snapshot.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .collection import CollectionConfig, write_manifest
from .device import DeviceUnavailable
from .errors import CorruptData, QuiverError
from .lock import DirectoryLock
from .persist import read_manifest, read_metadata, write_metadata
from .segment import SEGMENT_KIND, Segment
from .wal import _NAME as _WAL_NAME
from .wal import _scan, _valid_record_after


@dataclass
class Finding:
    collection: str
    file: Path
    problem: str
    action: str
    loses: str
    fixable: bool = True

    def __str__(self) -> str:
        return (f"{self.collection}: {self.file}\n  problem: {self.problem}\n  action:  "
                f"{self.action}\n  loses:   {self.loses}")


def repair(path: str | Path, apply: bool = False) -> list[Finding]:
    """Findings for every collection under ``path``; with ``apply``, carry out the fixable
    ones. Holds the directory's writer lock throughout (no server may run on it)."""
    root = Path(path)
    if not (root / "collections").is_dir():
        raise CorruptData(f"{root}: no Quiver data directory here (no collections/)")
    lock = DirectoryLock(root)
    try:
        out: list[Finding] = []
        for d in sorted(p for p in (root / "collections").iterdir() if p.is_dir()):
            if d.name.endswith(".restoring"):
                continue
            out += _collection(d, apply)
        return out
    finally:
        lock.release()


def _collection(d: Path, apply: bool) -> list[Finding]:
    name = d.name
    try:
        CollectionConfig.load(d / "config.json")
    except CorruptData as exc:
        return [Finding(name, d / "config.json", str(exc), "none: restore config.json (or the "
                        "collection) from a snapshot", "-", fixable=False)]
    found = _wal(name, d / "wal", apply)
    manifest = d / "manifest.json"
    seg_root = d / "segments"
    seg_dirs = sorted(p for p in seg_root.iterdir() if p.is_dir()) if seg_root.is_dir() else []
    try:
        entries = read_metadata(manifest)["segments"] if manifest.exists() or seg_dirs else []
    except CorruptData as exc:
        found.append(_rebuild_manifest(name, d, seg_dirs, str(exc), apply))
        return found
    bad = []
    for e in entries:
        try:
            Segment.load(seg_root / e["dir"], e.get("deleted"), e.get("deleted_crc"))
        except DeviceUnavailable as exc:  # this install lacks what reads it: not damage
            found.append(Finding(name, seg_root / e["dir"], str(exc),
                                 "none: install what the message names; the segment is kept",
                                 "-", fixable=False))
        except (QuiverError, OSError, ValueError, KeyError) as exc:
            bad.append((e, exc))
    for e, exc in bad:
        loses = f"the segment's points ({_points(seg_root / e['dir'])}) unless a snapshot has them"
        found.append(Finding(name, seg_root / e["dir"], str(exc),
                             f"move to {d / 'quarantine'} and drop it from the manifest", loses))
    if bad and apply:
        body = read_metadata(manifest)
        gone = {e["dir"] for e, _ in bad}
        body["segments"] = [e for e in body["segments"] if e["dir"] not in gone]
        for g in gone:
            _quarantine(d, seg_root / g)
        write_metadata(manifest, body)
    return found


def _points(seg: Path) -> str:
    try:
        return f"{read_manifest(seg, SEGMENT_KIND)['meta']['n']} rows"
    except (QuiverError, KeyError, TypeError):
        return "an unknown number of rows"


def _quarantine(d: Path, seg: Path) -> None:
    (d / "quarantine").mkdir(exist_ok=True)
    shutil.move(str(seg), str(d / "quarantine" / seg.name))


def _wal(name: str, wal_dir: Path, apply: bool) -> list[Finding]:
    """A damaged record is cut with everything after it; a torn tail (what a crash leaves)
    is reported too, though opening cuts it by itself."""
    if not wal_dir.is_dir():
        return []
    files = sorted((int(m.group(1)), p) for p in wal_dir.iterdir()
                   if (m := _WAL_NAME.match(p.name)))
    out = []
    for i, (first, p) in enumerate(files):
        data = memoryview(p.read_bytes())
        recs, bad, why = _scan(data, first)
        if why is None:
            continue
        last_good = recs[-1][0] if recs else first - 1
        later = files[i + 1 :]
        torn = not later and _valid_record_after(data, bad + 1, last_good + 2) is None
        data.release()
        if torn:
            out.append(Finding(name, p, f"torn tail at offset {bad} ({why})", "cut there (opening "
                               "does this by itself)", "a write that was never acknowledged"))
        else:
            extra = f" and {len(later)} later log file(s)" if later else ""
            out.append(Finding(name, p, f"damaged record at offset {bad} (seq {last_good + 1}): {why}",
                               f"cut the log at offset {bad}{extra}",
                               f"every write after seq {last_good} (acknowledged ones included)"))
        if apply:
            with open(p, "r+b") as f:
                f.truncate(bad)
            for _, q in later:
                q.unlink()
        break
    return out


def _rebuild_manifest(name: str, d: Path, seg_dirs: list[Path], problem: str,
                      apply: bool) -> Finding:
    """A manifest from the segments' own (checksummed) manifests: each point's newest row
    wins, each segment's newest deletion bitmap applies, and the checkpoint is the newest
    row version (or what the log still starts from)."""
    segs, broken = [], []
    for p in seg_dirs:
        bitmaps = sorted(p.glob("deleted-*.npy"))
        try:
            segs.append(Segment.load(p, bitmaps[-1].name if bitmaps else None, None))
        except (QuiverError, OSError, ValueError, KeyError):
            broken.append(p)
    newest: dict = {}
    for s in segs:
        live = ~_dead(s)
        for r in np.flatnonzero(live).tolist():
            ext, ver = s.ext_ids[r], int(s.versions[r])
            if ext not in newest or newest[ext][0] < ver:
                newest[ext] = (ver, s, r)
    seq = max((v for v, _, _ in newest.values()), default=0)
    wal_first = min((int(m.group(1)) for p in (d / "wal").iterdir()
                     if (m := _WAL_NAME.match(p.name))), default=1) if (d / "wal").is_dir() else 1
    seq = max(seq, wal_first - 1)
    loses = ("points deleted or replaced after seq "
             f"{seq} whose log records are gone may come back as they were")
    if broken:
        loses += f"; {len(broken)} damaged segment(s) go to quarantine with their points"
    f = Finding(name, d / "manifest.json", problem,
                f"rebuild it from {len(segs)} segment(s), checkpoint at seq {seq}", loses)
    if apply:
        for p in broken:
            _quarantine(d, p)
        entries = []
        for s in segs:
            stale = [r for r in np.flatnonzero(~_dead(s)).tolist()
                     if newest[s.ext_ids[r]][1] is not s or newest[s.ext_ids[r]][2] != r]
            s.mark_deleted(np.asarray(stale, np.int64))
            file, crc = s.write_deleted(seq)
            entries.append({"id": s.id, "dir": s.path.name, "deleted": file, "deleted_crc": crc})
        ids = [int(p.name[4:]) for p in seg_dirs if p.name[4:].isdigit()]
        write_manifest(d, seq, max(ids, default=0) + 1, entries)
    return f


def _dead(s: Segment) -> np.ndarray:
    from .bitset import Bitset

    return Bitset(s.deleted[: (s.n + 63) >> 6], s.n).to_mask() if s.n else np.zeros(0, bool)
