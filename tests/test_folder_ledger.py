"""The folder ledger on its own: claims, decisions, totals, surviving a reopen, and the group
operations (one transaction each: all of the group or none of it)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from monitord.builtin.folder_ledger import Decision, FileIdentity, Ledger

A = FileIdentity(1, 10, 100, 5)
B = FileIdentity(1, 11, 100, 6)


def test_a_file_is_claimed_decided_and_finished_then_counted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    entry = ledger.begin("7/a.png", A)
    assert (entry.attempts, entry.decided) == (1, False)
    ledger.decide("7/a.png", "ok", tmp_path / "processed/7/a.png", tmp_path / "processed/7/a.png.json", "{}")
    [pending] = ledger.unfinished()
    assert pending.outcome == "ok" and pending.target.endswith("processed/7/a.png")
    ledger.finish("7/a.png", "ok")
    assert ledger.unfinished() == []
    assert ledger.totals() == {"ok": 1}


def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.begin("a.png", A)
    ledger.begin("b.png", B)
    ledger.decide("b.png", "rejected", tmp_path / "failed/b.png", tmp_path / "failed/b.png.reason.txt", "bad\n")
    ledger.begin("c.png", FileIdentity(1, 12, 1, 1))
    ledger.finish("c.png", "ok")
    ledger.close()

    reopened = Ledger(tmp_path / "ledger.sqlite3")
    entries = {entry.relative: entry for entry in reopened.unfinished()}
    assert set(entries) == {"a.png", "b.png"}
    assert not entries["a.png"].decided and entries["b.png"].sidecar_text == "bad\n"
    assert reopened.totals() == {"ok": 1}
    # A decided file comes back with its outcome instead of a new claim.
    again = reopened.begin("b.png", B)
    assert again.decided and again.outcome == "rejected" and again.attempts == 1


def test_claims_count_attempts_of_the_same_file_only(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.begin("a.png", A).attempts == 1
    assert ledger.begin("a.png", A).attempts == 2  # the daemon stopped mid-batch once
    assert ledger.begin("a.png", B).attempts == 1  # another file under the same name
    ledger.release("a.png")  # a shutdown: the claim does not count against the file
    assert ledger.unfinished() == []


def test_an_unreadable_ledger_is_set_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not an SQLite database, it was overwritten" * 100)
    ledger = Ledger(path)
    assert ledger.unfinished() == [] and ledger.totals() == {}
    ledger.begin("a.png", A)
    aside = list(tmp_path.glob("ledger.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_a_ledger_another_process_holds_locked_is_waited_for_and_never_set_aside(tmp_path: Path,
                                                                             monkeypatch) -> None:
    import threading

    import monitord.builtin.folder_ledger as folder_ledger

    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=DELETE")  # leave WAL: opening it must now take an exclusive lock
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(folder_ledger, "OPEN_TIMEOUT", 0.3)
    with pytest.raises(folder_ledger.LedgerError, match="another monitord"):
        Ledger(path)
    assert not list(tmp_path.glob("ledger.sqlite3.corrupt-*"))  # a lock is not corruption

    monkeypatch.setattr(folder_ledger, "OPEN_TIMEOUT", 30.0)
    releaser = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    releaser.start()
    ledger = Ledger(path)  # waits for the lock, then opens the same ledger
    releaser.join()
    holder.close()
    ledger.begin("a.png", A)
    assert [entry.relative for entry in ledger.unfinished()] == ["a.png"]
    assert not list(tmp_path.glob("ledger.sqlite3.corrupt-*"))
    ledger.close()


# -- group operations: one transaction each, all or nothing ---------------------------------


def identity(inode: int) -> FileIdentity:
    return FileIdentity(1, inode, 100, inode * 7)


def decision(relative: str, tmp_path: Path, outcome: str = "ok") -> Decision:
    target = tmp_path / "processed" / relative
    return Decision(relative, outcome, target, target.with_name(target.name + ".json"), f'{{"id": "{relative}"}}')


def test_a_group_is_claimed_decided_and_finished_in_three_transactions(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    names = [f"{index % 10}/f{index:04}.png" for index in range(1200)]  # more than one statement's chunk
    entries = ledger.begin_many([(name, identity(index)) for index, name in enumerate(names)])
    assert [entry.relative for entry in entries] == names and {entry.attempts for entry in entries} == {1}
    assert len(ledger.unfinished()) == 1200

    ledger.decide_many([decision(name, tmp_path, "ok" if index % 3 else "rejected")
                        for index, name in enumerate(names)])
    unfinished = {entry.relative: entry for entry in ledger.unfinished()}
    assert all(entry.decided for entry in unfinished.values())
    assert unfinished["7/f0007.png"].target == str(tmp_path / "processed" / "7/f0007.png")
    assert unfinished["7/f0007.png"].sidecar_text == '{"id": "7/f0007.png"}'

    ledger.finish_many([(name, "ok" if index % 3 else "rejected") for index, name in enumerate(names[:1000])])
    assert sorted(entry.relative for entry in ledger.unfinished()) == sorted(names[1000:])
    assert ledger.totals() == {"ok": 666, "rejected": 334}
    ledger.finish_many([(name, "ok") for name in names[1000:]])
    assert ledger.unfinished() == [] and ledger.totals() == {"ok": 866, "rejected": 334}


def test_begin_many_counts_attempts_and_returns_decided_entries_unclaimed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.begin_many([("a.png", A), ("b.png", B), ("c.png", identity(12))])
    ledger.decide_many([decision("b.png", tmp_path)])
    again = ledger.begin_many([("a.png", A), ("b.png", B), ("c.png", identity(99)), ("d.png", identity(13))])
    assert [(entry.relative, entry.attempts, entry.decided) for entry in again] == [
        ("a.png", 2, False),  # the same file again: one more attempt
        ("b.png", 1, True),  # decided before a crash: returned as it is, not claimed again
        ("c.png", 1, False),  # another file under the name: it starts afresh
        ("d.png", 1, False),
    ]
    assert again[1].outcome == "ok" and again[1].sidecar_text == '{"id": "b.png"}'
    # The same name twice in one group counts twice, as two claims one after the other would.
    assert [entry.attempts for entry in ledger.begin_many([("a.png", A), ("a.png", A)])] == [3, 4]


def test_a_failing_group_operation_changes_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.begin_many([("a.png", A), ("b.png", B)])
    before = ledger.unfinished()

    class Unbindable:  # SQLite cannot store it: the statement binding it fails
        pass

    # 400 files take several statements: the bad value sits in the last one, after the
    # others have run inside the transaction.
    many = [(f"new-{index:03}.png", identity(100 + index)) for index in range(400)]
    broken = FileIdentity(1, Unbindable(), 1, 1)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.Error):
        ledger.begin_many([("a.png", A), *many, ("z.png", broken)])
    assert ledger.unfinished() == before  # a.png not counted again, none of the new ones claimed

    decisions = [decision("a.png", tmp_path), *(decision(f"n{index}.png", tmp_path) for index in range(400))]
    with pytest.raises(sqlite3.Error):
        ledger.decide_many([*decisions, decision("b.png", tmp_path, Unbindable())])  # type: ignore[arg-type]
    assert ledger.unfinished() == before  # a.png not decided either

    with pytest.raises(sqlite3.Error):
        ledger.finish_many([("a.png", "ok"), ("b.png", Unbindable())])  # type: ignore[list-item]
    assert ledger.unfinished() == before and ledger.totals() == {}  # the rows deleted first are back

    # The ledger is still usable after a rollback.
    ledger.finish_many([("a.png", "ok")])
    assert [entry.relative for entry in ledger.unfinished()] == ["b.png"] and ledger.totals() == {"ok": 1}


def test_release_many_undoes_only_claims_without_an_outcome(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.begin_many([("a.png", A), ("b.png", B), ("c.png", identity(12))])
    ledger.begin_many([("c.png", identity(12))])  # c.png: a second attempt
    ledger.decide_many([decision("b.png", tmp_path)])
    ledger.release_many(["a.png", "b.png", "c.png"])
    entries = {entry.relative: entry for entry in ledger.unfinished()}
    assert set(entries) == {"b.png", "c.png"}  # a.png was only claimed: forgotten
    assert entries["b.png"].decided  # an outcome is never released
    assert entries["c.png"].attempts == 1  # the earlier attempt still counts
    ledger.forget_many(["b.png", "c.png"])
    assert ledger.unfinished() == []


def test_group_operations_keep_names_that_are_not_utf8(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    raw = os.fsdecode(b"\xff\xfe-raw.png")
    entries = ledger.begin_many([(raw, A), ("plain.png", B)])
    assert entries[0].relative == raw
    ledger.decide_many([decision(raw, tmp_path)])
    assert [entry.relative for entry in ledger.begin_many([(raw, A)])] == [raw]  # found again, decided
    ledger.finish_many([(raw, "ok")])
    assert [entry.relative for entry in ledger.unfinished()] == ["plain.png"]
    ledger.release_many([raw, "plain.png"])
    assert ledger.unfinished() == []
