"""Sets of custom_ids that remember where each was first seen, in little memory.

Finding duplicate ids across a job means remembering every id. A dict of str keys costs about
120 bytes an id (1,000,000 ids: ~120 MB); IdTable keeps the ids' bytes end to end in one
buffer and the rest in flat integer arrays (about 30 bytes plus the id's length), and it is
exact: a match is confirmed on the id's bytes, not just on its hash.

Even that grows with the job, so IdSet keeps an IdTable only up to a memory budget; past it,
every id goes to temporary files split by hash, and finish() reads them back one part at a
time (a part too big for the budget is split again). Memory then stays flat whatever the
number of requests.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
import tempfile
from array import array
from collections.abc import Iterator

MAX_LOAD = 0.7  # grow (double) past this share of used slots


class IdTable:
    """Open addressing over flat arrays: `slots` holds 1 + an id's index, 0 when empty."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        size = 1
        while size * MAX_LOAD < capacity:
            size <<= 1
        self._slots = array("I", bytes(4 * size))
        self._mask = size - 1
        self._arena = bytearray()  # every id's UTF-8 bytes, end to end
        self._ends = array("Q")  # where id i ends in the arena (it starts where i-1 ends)
        self._hashes = array("q")  # hash of id i, so growing never re-reads the arena
        self._where = array("Q")  # what the caller stored with id i

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, key: bytes, where: int) -> int | None:
        """Remember `key` with `where`, or, if it is already here, return its first `where`."""
        h = hash(key)
        slots, hashes, i = self._slots, self._hashes, h & self._mask
        while True:
            slot = slots[i]
            if not slot:
                break
            index = slot - 1
            if hashes[index] == h:
                start = self._ends[index - 1] if index else 0
                if self._arena[start:self._ends[index]] == key:
                    return self._where[index]
            i = (i + 1) & self._mask
        self._arena += key
        self._ends.append(len(self._arena))
        hashes.append(h)
        self._where.append(where)
        slots[i] = len(self._ends)
        if len(self._ends) > self._mask * MAX_LOAD:
            self._grow()
        return None

    def _grow(self) -> None:
        size = (self._mask + 1) * 2
        mask = size - 1
        slots = array("I", bytes(4 * size))
        for index, h in enumerate(self._hashes):
            i = h & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = index + 1
        self._slots, self._mask = slots, mask

    def nbytes(self) -> int:
        """About how much memory the table holds."""
        return (len(self._arena) + 4 * (self._mask + 1)
                + 8 * (len(self._ends) + len(self._hashes) + len(self._where)))

    def items(self) -> Iterator[tuple[bytes, int]]:
        """(id, where) in the order they were added."""
        start = 0
        for end, where in zip(self._ends, self._where, strict=True):
            yield bytes(self._arena[start:end]), where
            start = end


MEMORY_BUDGET = 32 << 20  # bytes of ids held in memory before they go to temporary files
PARTS = 32  # temporary files; finish() holds one of them in memory at a time
_RECORD = struct.Struct("<QI")  # where, length of the id; then the id's bytes
PART_MEMORY_RATIO = 3  # an IdTable takes up to about 3x the bytes of its records on disk
MAX_DEPTH = 4  # parts split at most this deep (32**4 parts: far beyond any job)


class IdSet:
    """Every id of a job, exact, in flat memory.

    add() answers at once while the ids fit the memory budget (the common case). Past it,
    the ids seen so far and every later one are written to PARTS temporary files (by hash,
    each in the order added), and the repeats among them are found by finish(): the caller
    must call it after the last add(). Temporary files go to the system's temporary folder
    (TMPDIR) and are removed by finish() or close() (call it when an error stops the check).
    """

    def __init__(self, memory_budget: int | None = None, parts: int | None = None) -> None:
        self.memory_budget = MEMORY_BUDGET if memory_budget is None else memory_budget
        self.parts = PARTS if parts is None else parts
        self._table: IdTable | None = IdTable()
        self._dir: tempfile.TemporaryDirectory | None = None
        self._files: list = []
        self._until_check = 1

    @property
    def spilled(self) -> bool:
        return self._table is None

    def add(self, key: bytes, where: int) -> int | None:
        """Remember `key` with `where`; if it was seen before, return its first `where`
        (once spilled, always None: the repeat is reported by finish())."""
        if self._table is not None:
            first = self._table.add(key, where)
            self._until_check -= 1
            if not self._until_check:  # measuring the table every time would cost more
                self._until_check = 1024
                if self._table.nbytes() > self.memory_budget:
                    self._spill()
            return first
        self._files[(hash(key) >> 32) % self.parts].write(_RECORD.pack(where, len(key)) + key)
        return None

    def _spill(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="dwbatch-ids-")
        self._files = [open(os.path.join(self._dir.name, f"{i:03d}.ids"), "wb",
                            buffering=1 << 16) for i in range(self.parts)]
        table, self._table = self._table, None
        for key, where in table.items():
            self.add(key, where)

    def finish(self, keep: int) -> tuple[list[tuple[int, int, bytes]], int]:
        """The repeats not yet reported: (first where, repeat's where, id) for the `keep`
        smallest repeat `where`s, in order, and how many repeats there are in all."""
        if self._table is not None:
            return [], 0
        repeats = _FirstRepeats(keep)
        try:
            for f in self._files:
                f.close()
            for f in self._files:
                self._repeats_in(f.name, 1, repeats)
        finally:
            self.close()
        return repeats.in_order(), repeats.count

    def close(self) -> None:
        """Close and remove the temporary files (files first: Windows cannot remove an open
        file). Safe to call more than once, and when nothing was spilled."""
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _repeats_in(self, path: str, depth: int, repeats: _FirstRepeats) -> None:
        """Find the repeats in one part, then remove it. A part too big to hold in memory (a
        very large job) is first split again by another hash, so memory stays flat at any
        size; a part of one id repeated many times cannot be split, but holds just one id."""
        if os.path.getsize(path) * PART_MEMORY_RATIO > self.memory_budget and depth < MAX_DEPTH:
            subs = [open(f"{path}.{i}", "wb", buffering=1 << 16) for i in range(self.parts)]
            try:
                for key, where in _records(path):
                    subs[hash((depth, key)) % self.parts].write(
                        _RECORD.pack(where, len(key)) + key)
            finally:
                for sub in subs:
                    sub.close()
            os.unlink(path)
            for sub in subs:
                self._repeats_in(sub.name, depth + 1, repeats)
            return
        table = IdTable()
        for key, where in _records(path):
            first = table.add(key, where)
            if first is not None:
                repeats.add(first, where, key)
        os.unlink(path)  # read: its disk space is free for the next part


class _FirstRepeats:
    """Counts repeats and keeps the `keep` with the smallest `where` (the first in the job)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.count = 0
        self._heap: list[tuple[int, int, bytes]] = []  # (-where, first, id): largest on top

    def add(self, first: int, where: int, key: bytes) -> None:
        self.count += 1
        item = (-where, first, key)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, item)
        elif self.keep and item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def in_order(self) -> list[tuple[int, int, bytes]]:
        return [(first, -neg, key) for neg, first, key in sorted(self._heap, reverse=True)]


def _records(path: str) -> Iterator[tuple[bytes, int]]:
    size = _RECORD.size
    with open(path, "rb", buffering=1 << 16) as f:
        while True:
            head = f.read(size)
            if not head:
                return
            where, length = _RECORD.unpack(head)
            yield f.read(length), where
