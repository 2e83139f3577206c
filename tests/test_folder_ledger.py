"""The folder ledger on its own: claims, decisions, totals, and surviving a reopen."""

from __future__ import annotations

from pathlib import Path

from monitord.builtin.folder_ledger import FileIdentity, Ledger

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
