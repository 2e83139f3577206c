"""The compiled treap behind :class:`~monitord_drift.iks.IncrementalKS`.

Why a treap over the *reference's* distinct values, holding the window as counts:

Let the reference have ``n`` values and distinct values ``r_1 < ... < r_k``, the window
``m`` values. Between two consecutive reference values ``F_ref`` is constant and
``F_win`` only grows, so ``F_ref - F_win`` can only fall there: its extremes are reached
right after some ``r_i`` (all copies of it counted, in both samples) or right before some
``r_i`` (after every window value below it). Which window values lie where therefore
matters only through two counts per reference value: ``equal_i``, window values equal to
``r_i``, and ``below_i``, window values strictly between ``r_{i-1}`` and ``r_i``. A
sentinel key above every finite value collects the window values above ``r_k``.

Each node (one per reference value, in key order, plus the sentinel) is a little
sequence of two steps of ``n * m * (F_ref - F_win)``: first ``-n * below_i`` (the gap
below ``r_i``), then ``m * count_ref_i - n * equal_i`` (the value itself). Stored as
``GAP = n * below_i`` and ``VAL = m * count_ref_i - n * (below_i + equal_i)``, the node
keeps for its subtree the sum of its steps and the largest and smallest prefix sum (the
empty prefix included, so they bracket 0). At the root these are
``n * m * max(F_ref - F_win)`` and ``n * m * min(F_ref - F_win)``, evaluated at exactly
the points where ``scipy.stats.ks_2samp`` evaluates them, so
``D = max(MAXP, -MINP) / (n * m)``: exact, ties included, in integers until that one
division, so no rounding error builds up however long the stream runs. ``m`` here is the
full window: until the window first fills, the root's figures are not ``D`` (the
detector is not ready then and reports no statistic).

Because the reference is fixed, so is the set of keys: the treap (random priorities,
heap-ordered; a Cartesian tree) is built once in O(k) and never rotates. A window value
entering or leaving changes ``VAL``/``GAP`` of one node and re-derives the aggregates on
its way to the root: O(log k) expected, whatever the window size. The two walks of one
step (the oldest value leaving, the newest entering) merge where their paths meet.

Layout, chosen for speed: preallocated numpy arrays, compiled by numba to plain loops,
the whole batch in one call. A node is one 64-byte row of int64 (one cache line); nodes
are numbered in key order (node ``i + 1`` holds the ``i``-th smallest key), so a binary
search over the sorted keys finds a value's node directly. Keys are the float values
mapped to int64 with the same order (:func:`to_keys`). Row 0 is a null node with all
fields 0, so children pointing there need no test.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Columns of the node table.
LEFT, RIGHT, PARENT, VAL, GAP, SUM, MAXP, MINP = range(8)
FIELDS = 8
NULL = 0

# Slots of the int64 ``meta`` array: the tree root and the window ring (oldest, count).
ROOT, HEAD, COUNT = range(3)
META = 3

_LOW_BITS = np.int64(0x7FFFFFFFFFFFFFFF)


def to_keys(values: np.ndarray) -> np.ndarray:
    """Map floats to int64 keys with the same order (-0.0 and 0.0 to one key).

    Positive floats already order like their bit patterns; flipping the magnitude bits of
    negative ones reverses their order, which puts them below, in the right order.
    """
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.int64)
    return bits ^ ((bits >> 63) & _LOW_BITS)


def from_keys(keys: np.ndarray) -> np.ndarray:
    """The floats behind ``keys`` (the mapping is its own inverse)."""
    keys = np.asarray(keys, dtype=np.int64)
    return (keys ^ ((keys >> 63) & _LOW_BITS)).view(np.float64)


#: Above the key of every finite value: the sentinel node collects the window's values
#: above the largest reference value.
SENTINEL = int(to_keys(np.array([np.inf]))[0])


def allocate(distinct: int, window: int) -> dict[str, np.ndarray]:
    """Arrays for ``distinct`` reference values and a window of ``window`` values."""
    nodes = distinct + 1  # and the sentinel
    # Align rows to 64-byte cache lines: one line per node visited.
    raw = np.zeros((nodes + 2) * FIELDS, dtype=np.int64)
    skip = (-raw.ctypes.data % 64) // 8
    return {
        "table": raw[skip : skip + (nodes + 1) * FIELDS].reshape(nodes + 1, FIELDS),
        "depth": np.zeros(nodes + 1, dtype=np.int64),
        "keys": np.zeros(nodes, dtype=np.int64),
        "meta": np.zeros(META, dtype=np.int64),
        "ring": np.zeros(window, dtype=np.int64),  # keys, oldest at meta[HEAD]
        "slots": np.zeros(window, dtype=np.int64),  # 2 * node + (1 if in the gap below it)
    }


@njit(cache=True, inline="always")
def _pull(table: np.ndarray, node: np.int64) -> None:
    left = table[node, LEFT]
    right = table[node, RIGHT]
    left_sum = table[left, SUM]
    through = left_sum + table[node, VAL]
    table[node, SUM] = through + table[right, SUM]
    table[node, MAXP] = max(table[left, MAXP], through + table[right, MAXP])
    table[node, MINP] = min(table[left, MINP], left_sum - table[node, GAP], through + table[right, MINP])


@njit(cache=True)
def build(
    table: np.ndarray,
    depth: np.ndarray,
    meta: np.ndarray,
    ring: np.ndarray,
    priorities: np.ndarray,
    reference_counts: np.ndarray,
) -> None:
    """Build the treap over the sorted keys (node i + 1 for key i) and empty the window.

    ``priorities`` are random and heap-ordered (largest at the root); ``reference_counts``
    are the copies of each key in the reference (0 for the sentinel).
    """
    nodes = priorities.shape[0]
    width = np.int64(ring.shape[0])
    table[:, :] = 0
    # Cartesian tree in one pass over the keys, keeping the right spine on a stack.
    spine = np.empty(nodes, dtype=np.int64)
    top = 0
    for node in range(1, nodes + 1):
        last = NULL
        while top > 0 and priorities[spine[top - 1] - 1] < priorities[node - 1]:
            top -= 1
            last = spine[top]
        table[node, LEFT] = last
        if top > 0:
            table[spine[top - 1], RIGHT] = node
        spine[top] = node
        top += 1
        table[node, VAL] = width * reference_counts[node - 1]
    root = spine[0]
    meta[ROOT] = root
    meta[HEAD] = 0
    meta[COUNT] = 0
    # Parents and depths in preorder; aggregates in reverse preorder (children first).
    order = np.empty(nodes, dtype=np.int64)
    depth[NULL] = -1
    depth[root] = 0
    table[root, PARENT] = NULL
    order[0] = root
    filled = 1
    for index in range(nodes):
        node = order[index]
        for side in (LEFT, RIGHT):
            child = table[node, side]
            if child != NULL:
                table[child, PARENT] = node
                depth[child] = depth[node] + 1
                order[filled] = child
                filled += 1
    for index in range(nodes - 1, -1, -1):
        _pull(table, order[index])


@njit(cache=True)
def slide(
    table: np.ndarray,
    depth: np.ndarray,
    keys: np.ndarray,
    meta: np.ndarray,
    ring: np.ndarray,
    slots: np.ndarray,
    n_reference: np.int64,
    values: np.ndarray,
    warning_threshold: float,
    drift_threshold: float,
    level: np.int64,
    statistics: np.ndarray,
    codes: np.ndarray,
) -> np.int64:
    """Push finite ``values`` through the window; per value, the statistic and level code.

    Until the window is full the statistic is NaN and the code 0: no decision is taken
    on a partial window (its threshold would be a moving target). Returns how often the
    level code rose, starting from ``level``, so that a batch without events costs no
    further work in Python.
    """
    width = np.int64(ring.shape[0])
    scale = 1.0 / (float(n_reference) * float(width))
    bits = values.view(np.int64)
    rises = 0
    for index in range(values.shape[0]):
        # to_keys, inline; -0.0 lands on -1 and joins 0.0.
        key = bits[index] ^ ((bits[index] >> 63) & _LOW_BITS)
        if key == -1:
            key = 0
        rank = np.searchsorted(keys, key)
        node = rank + 1
        in_gap = np.int64(keys[rank] != key)
        slot = 2 * node + in_gap
        table[node, VAL] -= n_reference
        table[node, GAP] += in_gap * n_reference

        if meta[COUNT] == width:
            head = meta[HEAD]
            old_slot = slots[head]
            ring[head] = key
            slots[head] = slot
            meta[HEAD] = head + 1 if head + 1 < width else 0
            other = old_slot >> 1
            table[other, VAL] += n_reference
            table[other, GAP] -= (old_slot & 1) * n_reference
            if old_slot != slot:
                # Re-derive both paths, deepest pending node first, once above where they meet.
                while other != node:
                    if depth[other] >= depth[node]:
                        _pull(table, other)
                        other = table[other, PARENT]
                    else:
                        _pull(table, node)
                        node = table[node, PARENT]
                while node != NULL:
                    _pull(table, node)
                    node = table[node, PARENT]
        else:
            ring[meta[COUNT]] = key
            slots[meta[COUNT]] = slot
            meta[COUNT] += 1
            while node != NULL:
                _pull(table, node)
                node = table[node, PARENT]

        if meta[COUNT] == width:
            root = meta[ROOT]
            statistic = max(table[root, MAXP], -table[root, MINP]) * scale
            statistics[index] = statistic
            code = 2 if statistic > drift_threshold else (1 if statistic > warning_threshold else 0)
            if level == 2 and code == 1:
                code = 2  # hysteresis: a drift lasts until D falls to the warning threshold
        else:
            statistics[index] = np.nan
            code = 0
        codes[index] = code
        rises += code > level
        level = code
    return rises
