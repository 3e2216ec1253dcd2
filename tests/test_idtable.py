"""The compact id table finds exactly the ids seen before, and where they were first seen."""

from __future__ import annotations

import random

from dwbatch.idtable import IdTable


def test_remembers_first_place_and_finds_every_repeat_exactly():
    rng = random.Random(7)
    table, reference = IdTable(capacity=4), {}
    for n in range(50_000):  # many times the first capacity: the table grows as it fills
        key = f"id-{rng.randrange(30_000)}".encode()
        first = table.add(key, n)
        assert first == reference.get(key)
        reference.setdefault(key, n)
    assert len(table) == len(reference)


def test_ids_that_differ_only_slightly_are_different():
    table = IdTable()
    for key in (b"a", b"a ", b"A", "é".encode(), b"", b"ab"):
        assert table.add(key, 1) is None
    assert table.add(b"a ", 2) == 1


def test_equal_hashes_are_told_apart_by_the_bytes(monkeypatch):
    import dwbatch.idtable as idtable

    monkeypatch.setattr(idtable, "hash", lambda key: 42, raising=False)
    table = IdTable(capacity=2)
    for n, key in enumerate([b"x", b"y", b"z", b"w"]):
        assert table.add(key, n) is None, "same hash, different id: not a duplicate"
    assert table.add(b"z", 9) == 2
