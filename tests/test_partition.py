"""Splitting the folder source's work among worker processes, without a daemon.

``Partition.owns`` must give every file exactly one owner, the same one in every process
(whatever Python's hash seed), and an even share to each; the ledger must take several
processes opening and writing it at once; and two folder sources with complementary
partitions over one inbox must take disjoint sets of files that together are all of
them, each completing after a crash only the decided moves it owns.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from digit_files import drop_atomically, files_under
from monitord.builtin.folder_ledger import Decision, FileIdentity, Ledger
from monitord.sources import Partition
from test_folder_source import StubPipeline, in_process_source, wait_until

KEYS = 10_000


def varied_keys(count: int = KEYS) -> list[str]:
    """Paths under an inbox of every kind a folder may hold: digit files in label folders,
    random ASCII, unicode, and names that are not UTF-8 (surrogate-escaped, as
    ``os.fsdecode`` gives them)."""
    rng = random.Random(20240601)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ ."
    unicode_parts = ["é", "ß", "数字", "😀", "Ωmega", "ü", "ℕ", "חדש", "naïve", "\u200b"]
    keys: list[str] = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            key = f"{index % 10}/d{index:05}.png"
        elif kind == 1:
            depth = rng.randint(0, 3)
            parts = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(depth)]
            key = "/".join([*parts, f"img-{index}.jpg"])
        elif kind == 2:
            key = f"{rng.choice(unicode_parts)}/{rng.choice(unicode_parts)}-{index}.png"
        elif kind == 3:
            raw = bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 6)))
            key = f"latin1/{raw.decode('utf-8', 'surrogateescape')}-{index}.png"
        else:
            key = f"{index}.png"
        keys.append(key)
    assert len(set(keys)) == count
    assert any("\udc80" <= character <= "\udcff" for key in keys for character in key)  # not UTF-8
    return keys


def owners(keys: list[str], count: int) -> list[int]:
    """Each key's owner among ``count`` shares; -1 for none, -2 for more than one."""
    result = []
    for key in keys:
        found = [index for index in range(count) if Partition(index, count).owns(key)]
        result.append(found[0] if len(found) == 1 else (-1 if not found else -2))
    return result


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_every_key_has_exactly_one_owner_and_each_share_a_fair_part(count: int) -> None:
    keys = varied_keys()
    found = owners(keys, count)
    assert -1 not in found and -2 not in found
    shares = Counter(found)
    assert sorted(shares) == list(range(count))
    even = KEYS / count
    assert all(abs(share - even) <= 0.2 * even for share in shares.values()), shares
    # Real inboxes: sequential names in label folders, alone, are spread fairly too.
    digits = [key for key in keys if key[0].isdigit() and key[1] == "/"]
    digit_shares = Counter(owners(digits, count))
    assert all(abs(share - len(digits) / count) <= 0.2 * len(digits) / count
               for share in digit_shares.values()) and len(digit_shares) == count, digit_shares


CHILD = """
import json, sys
from monitord.sources import Partition
keys = json.loads(sys.stdin.read())
owners = {count: [[Partition(i, count).owns(key) for i in range(count)].index(True) for key in keys]
          for count in range(1, 6)}
print(json.dumps({"owners": owners, "hash": hash(keys[0])}))
"""


def test_owners_are_the_same_in_other_processes_with_other_hash_seeds() -> None:
    keys = varied_keys()
    expected = {str(count): owners(keys, count) for count in range(1, 6)}
    hashes = []
    for seed in ("0", "4242"):
        result = subprocess.run(
            [sys.executable, "-c", CHILD], input=json.dumps(keys), capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["owners"] == expected
        hashes.append(answer["hash"])
    assert hashes[0] != hashes[1]  # Python's own hash does differ: the seeds mattered


# -- the ledger, shared by several processes --------------------------------------------------

LEDGER_CHILD = """
import os, sys, time
from pathlib import Path
from monitord.builtin.folder_ledger import Decision, FileIdentity, Ledger

path, worker, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.0005)
ledger = Ledger(Path(path))
names = [f"w{worker}/f{index:03}.png" for index in range(200)]
step = 10 + 7 * worker  # groups of different sizes, so the transactions interleave unevenly
for start in range(0, len(names), step):
    group = names[start:start + step]
    entries = ledger.begin_many([(name, FileIdentity(1, worker * 1000 + start + i, 10, 5))
                                 for i, name in enumerate(group)])
    assert [entry.relative for entry in entries] == group
    assert all(entry.attempts == 1 and not entry.decided for entry in entries), entries
    outcomes = ["rejected" if name.endswith("0.png") else "ok" for name in group]
    ledger.decide_many([Decision(name, outcome, "/out/" + name, "/out/" + name + ".json", "{}")
                        for name, outcome in zip(group, outcomes)])
    ledger.finish_many(list(zip(group, outcomes)))
ledger.close()
print("done", worker)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_four_processes_open_one_new_ledger_at_once_and_claim_decide_and_finish(tmp_path: Path,
                                                                                attempt: int) -> None:
    path = tmp_path / "state" / "ledger.sqlite3"
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", LEDGER_CHILD, str(path), str(worker), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for worker in range(4)
    ]
    time.sleep(1.0)  # every child has imported monitord and waits for the signal
    go.touch()
    results = [child.communicate(timeout=120) for child in children]
    for worker, (child, (out, err)) in enumerate(zip(children, results)):
        assert child.returncode == 0 and out.strip() == f"done {worker}", err
    ledger = Ledger(path)
    try:
        assert ledger.unfinished() == []
        totals = ledger.totals()
        assert sum(totals.values()) == 800
        assert totals == {"ok": 720, "rejected": 80}  # 20 names in each 200 end in 0
    finally:
        ledger.close()


# -- two folder sources, complementary partitions, one inbox and one ledger ------------------


async def test_two_sources_with_complementary_partitions_take_disjoint_shares_of_every_file(tmp_path: Path) -> None:
    names = [f"{index % 10}/d{index:03}.png" for index in range(80)] + ["数字/ü-1.png", "top.png"]
    for name in names:
        drop_atomically(tmp_path / "inbox", name, b"image")
    pipelines = [StubPipeline(), StubPipeline()]
    sources = [in_process_source(tmp_path, pipelines[index], Partition(index, 2)) for index in range(2)]
    await asyncio.gather(*(source.start() for source in sources))
    try:
        await wait_until(lambda: len(files_under(tmp_path / "processed")) == len(names))
        await wait_until(lambda: files_under(tmp_path / "inbox") == [])
    finally:
        await asyncio.gather(*(source.stop() for source in sources))
    first, second = (set(pipeline.seen) for pipeline in pipelines)
    assert len(pipelines[0].seen) == len(first) and len(pipelines[1].seen) == len(second)  # once each
    assert first and second and not first & second
    assert first | second == set(names)
    assert all(Partition(0, 2).owns(name) for name in first)
    assert all(Partition(1, 2).owns(name) for name in second)
    processed = sorted(path.relative_to(tmp_path / "processed").as_posix()
                       for path in files_under(tmp_path / "processed", "*.png"))
    assert processed == sorted(names)
    assert all(path.with_name(path.name + ".json").exists() for path in files_under(tmp_path / "processed", "*.png"))
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        assert ledger.unfinished() == [] and ledger.totals() == {"ok": len(names)}
    finally:
        ledger.close()


def test_recovery_completes_only_the_decided_moves_the_source_owns(tmp_path: Path) -> None:
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    names = [f"{index % 3}/r{index:02}.png" for index in range(24)]
    for name in names:
        drop_atomically(inbox, name, b"image")
    decided, claimed = names[:16], names[16:]
    assert any(Partition(0, 2).owns(name) for name in decided)
    assert any(Partition(1, 2).owns(name) for name in decided)
    assert any(Partition(0, 2).owns(name) for name in claimed)
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.begin_many([(name, FileIdentity.of(inbox / name)) for name in names])
    ledger.decide_many([Decision(name, "ok", str(processed / name), str(processed / f"{name}.json"),
                                 json.dumps({"id": name})) for name in decided])
    ledger.close()

    def unfinished() -> dict[str, bool]:
        reader = Ledger(tmp_path / "state" / "ledger.sqlite3")
        try:
            return {entry.relative: entry.decided for entry in reader.unfinished()}
        finally:
            reader.close()

    def recover(partition: Partition) -> None:
        source = in_process_source(tmp_path, StubPipeline(), partition)
        try:
            source._recover()
        finally:
            assert source._pool is not None and source.ledger is not None
            source._pool.shutdown()
            source.ledger.close()

    recover(Partition(0, 2))
    ours = [name for name in decided if Partition(0, 2).owns(name)]
    theirs = [name for name in decided if not Partition(0, 2).owns(name)]
    for name in ours:
        assert (processed / name).exists() and not (inbox / name).exists()
        assert json.loads((processed / f"{name}.json").read_text()) == {"id": name}
    for name in theirs + claimed:  # not this source's, or never decided: left alone
        assert (inbox / name).exists() and not (processed / name).exists()
    assert unfinished() == {**{name: True for name in theirs}, **{name: False for name in claimed}}

    recover(Partition(1, 2))
    assert all((processed / name).exists() and not (inbox / name).exists() for name in decided)
    assert unfinished() == {name: False for name in claimed}  # processed again at the next start
    assert all((inbox / name).exists() for name in claimed)
    reader = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        assert reader.totals() == {"ok": len(decided)}
    finally:
        reader.close()
