"""A set of custom_ids that remembers where each was first seen, in little memory.

Finding duplicate ids across a job means remembering every id. A dict of str keys costs about
120 bytes an id (1,000,000 ids: ~120 MB); this table keeps the ids' bytes end to end in one
buffer and the rest in flat integer arrays (about 30 bytes plus the id's length), and it is
exact: a match is confirmed on the id's bytes, not just on its hash.
"""

from __future__ import annotations

from array import array

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
