"""Mixing arithmetic: how many negatives and how many general-chat samples a split gets, which ones, in what order.

Takes: counts, the configured positive:negative ratio and AgentTuning's eta, and per-item uniform numbers.
Gives:
  - `negatives_target(positives, ratio)`: negatives for `ratio` positives per negative (4 means 4:1);
  - `irrelevance_target(tool_traces, share)`: irrelevance copies so that they are `share` of the tool traces
    after augmentation (agenttune.data.augment);
  - `general_target(agent, eta)`: general samples so that agent / (agent + general) = eta (AgentTuning,
    Zeng et al. 2023, sec. 2.3: eta is the agent share of the training mix; 0.2 in the paper);
  - `smallest(us, k)`: the threshold that selects exactly the k items with the smallest numbers (each item's
    number is a hash of seed and id, so the choice is a deterministic uniform sample);
  - `interleave(a, a_count, b, b_count)`: the two streams merged in proportion, so general chat is spread over
    the training file rather than appended (deterministic, streaming);
  - `fraction(p, q)`: "p:q", the exact achieved ratio.
All targets use exact rational arithmetic and round half up, so 0.2 means 1/5 and not 0.2000000000000000111.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Iterator

import numpy as np


def _exact(x: float | int) -> Fraction:
    return Fraction(str(x))


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def share_of(n: int, share: float) -> int:
    """round(n * share), exact and half up (a per-kind share of the negatives still needed)."""
    return _round_half_up(n * _exact(share))


def negatives_target(positives: int, ratio: float) -> int:
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    return _round_half_up(positives / _exact(ratio))


def irrelevance_target(tool_traces: int, share: float) -> int:
    """round(T * s / (1 - s)): copies / (T + copies) = s."""
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    s = _exact(share)
    return _round_half_up(tool_traces * s / (1 - s))


def general_target(agent: int, eta: float) -> int:
    if not 0 < eta <= 1:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    e = _exact(eta)
    return _round_half_up(agent * (1 - e) / e)


def smallest(us: np.ndarray, k: int) -> float:
    """A threshold t with exactly k values <= t (values are distinct hashes); -1 when k is 0."""
    if k <= 0 or not len(us):
        return -1.0
    if k >= len(us):
        return float(us.max())
    return float(np.partition(us, k - 1)[k - 1])


def interleave(a: Iterable, a_count: int, b: Iterable, b_count: int) -> Iterator:
    """Items of a and b in proportion: the next item comes from the stream that is furthest behind its share."""
    a, b = iter(a), iter(b)
    i = j = 0
    while i < a_count or j < b_count:
        # Compare (i + 1) / a_count with (j + 1) / b_count without division; a wins ties.
        take_a = j >= b_count or (i < a_count and (i + 1) * b_count <= (j + 1) * a_count)
        if take_a:
            yield next(a)
            i += 1
        else:
            yield next(b)
            j += 1


def fraction(p: int, q: int) -> str:
    return f"{p}:{q}"
