"""The compact id table finds exactly the ids seen before, and where they were first seen;
past its memory budget the id set goes on in temporary files and finds the rest at finish()."""

from __future__ import annotations

import os
import random

from dwbatch.idtable import IdSet, IdTable


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


def _every_repeat(keys: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(first place, repeat's place, id) for each repeat, the way a dict would find them."""
    seen: dict[bytes, int] = {}
    repeats = []
    for where, key in enumerate(keys):
        if key in seen:
            repeats.append((seen[key], where, key))
        else:
            seen[key] = where
    return repeats


def test_id_set_past_its_memory_finds_every_repeat_at_finish_and_cleans_up():
    rng = random.Random(11)
    keys = [f"id-{rng.randrange(40_000)}".encode() for _ in range(60_000)]
    ids = IdSet(memory_budget=800_000, parts=4)  # about 8,000 ids
    answered = []
    for where, key in enumerate(keys):
        first = ids.add(key, where)
        if first is not None:
            answered.append((first, where, key))
    assert ids.spilled
    folder = ids._dir.name
    assert os.path.isdir(folder)
    later, count = ids.finish(keep=10**9)
    expected = _every_repeat(keys)
    assert answered and later, "repeats both before and after the spill"
    assert sorted(answered + later, key=lambda r: r[1]) == expected
    assert count == len(later)
    assert not os.path.exists(folder), "temporary files removed"


def test_id_set_finish_keeps_the_first_repeats_in_order_and_counts_the_rest():
    ids = IdSet(memory_budget=0, parts=3)  # spills at once
    keys = [b"a", b"b", b"a", b"c", b"b", b"a", b"d", b"c"]
    assert all(ids.add(key, where) is None for where, key in enumerate(keys))
    repeats, count = ids.finish(keep=2)
    assert repeats == [(0, 2, b"a"), (1, 4, b"b")] and count == 4


def test_id_set_that_fits_in_memory_answers_at_once_and_writes_nothing():
    ids = IdSet()
    assert ids.add(b"x", 1) is None and ids.add(b"x", 2) == 1
    assert not ids.spilled and ids.finish(keep=50) == ([], 0)


def test_checker_reports_repeats_found_after_the_spill_like_any_other(tmp_path, monkeypatch):
    import dwbatch.idtable as idtable
    from dwbatch.validate import check_files

    monkeypatch.setattr(idtable, "MEMORY_BUDGET", 4096)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    line = ('{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", '
            '"body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}\n')
    first.write_text("".join(line % f"r{i}" for i in range(3000)))
    second.write_text("".join(line % f"s{i}" for i in range(2000)) + line % "r5" + line % "s7")
    report = check_files([str(first), str(second)])
    assert not report.ok and report.problem_count == 2
    messages = [(p.file, p.line, p.custom_id, p.message) for p in report.problems]
    assert messages[0][:3] == (str(second), 2001, "r5")
    assert f"also used on line 6 of {first}" in messages[0][3]
    assert messages[1][:3] == (str(second), 2002, "s7") and "also used on line 8;" in \
        messages[1][3]


def test_id_set_splits_a_part_too_big_for_its_memory_again():
    """Parts bigger than the budget allows are split by another hash before they are read:
    the repeats are the same, found with less held at once."""
    rng = random.Random(3)
    keys = [f"id-{rng.randrange(20_000)}".encode() for _ in range(30_000)]
    ids = IdSet(memory_budget=0, parts=2)  # every part is "too big": split down to MAX_DEPTH
    for where, key in enumerate(keys):
        assert ids.add(key, where) is None
    folder = ids._dir.name
    repeats, count = ids.finish(keep=10**9)
    assert repeats == _every_repeat(keys) and count == len(repeats)
    assert not os.path.exists(folder)


def test_repeats_found_at_finish_take_their_place_among_the_first_problems(tmp_path,
                                                                            monkeypatch):
    """The report lists the first problems in file and line order, also when a repeated id
    is only found at the end (after the spill) and later lines were bad already."""
    import dwbatch.idtable as idtable
    from dwbatch.validate import check_files

    monkeypatch.setattr(idtable, "MEMORY_BUDGET", 4096)
    path = tmp_path / "a.jsonl"
    line = ('{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", '
            '"body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}\n')
    path.write_text("".join(line % f"r{i}" for i in range(3000)) + line % "r0"
                    + "not json\n" * 10)
    report = check_files([str(path)], max_problems=5)
    assert report.problem_count == 11
    assert [p.line for p in report.problems] == [3001, 3002, 3003, 3004, 3005]
    assert "duplicate custom_id: also used on line 1;" in report.problems[0].message


def test_the_builder_finds_repeats_past_the_spill_and_leaves_nothing(tmp_path, monkeypatch):
    import tempfile

    import dwbatch.idtable as idtable
    import pytest
    from dwbatch.build import write_requests
    from dwbatch.errors import InputError

    monkeypatch.setattr(idtable, "MEMORY_BUDGET", 4096)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    requests = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
                for i in range(3000)]
    requests.append(dict(requests[7]))
    with pytest.raises(InputError) as exc:
        write_requests(requests, str(tmp_path / "out.jsonl"))
    assert "<requests> line 3001 (custom_id 'r7'): duplicate custom_id: also used on line 8" \
        in exc.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert list((tmp_path / "tmp").iterdir()) == [], "the id check's temporary files are gone"
