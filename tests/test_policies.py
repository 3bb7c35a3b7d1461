"""The eviction policies: who gets evicted, in which order, and that protected keys survive."""

import pytest

from moe_tui.policies import FIFOPolicy, LFUPolicy, LRUPolicy, make_policy


def run(policy, capacity, accesses):
    """Play accesses through a cache of `capacity` slots; return hits and the final eviction order."""
    resident: list[int] = []
    hits = 0
    for key in accesses:
        if key in resident:
            hits += 1
            policy.access(key)
            continue
        if len(resident) == capacity:
            victim = policy.victim(resident)
            resident.remove(victim)
            policy.evict(victim)
        resident.append(key)
        policy.insert(key)
    return hits, policy.order(resident)


def test_lru_evicts_least_recently_used():
    hits, order = run(LRUPolicy(), 2, [1, 2, 1, 3, 1, 2])
    # 1 2 | 1 hit | 3 evicts 2 | 1 hit | 2 evicts 3
    assert hits == 2
    assert order == [1, 2]


def test_fifo_ignores_use():
    hits, order = run(FIFOPolicy(), 2, [1, 2, 1, 3, 1])
    # 1 2 | 1 hit | 3 evicts 1 (oldest arrival) | 1 evicts 2
    assert hits == 1
    assert order == [3, 1]


def test_lfu_keeps_frequent_keys_and_breaks_ties_by_recency():
    hits, order = run(LFUPolicy(), 2, [1, 1, 1, 2, 3, 2, 4])
    # 1 used 3 times | 2 | 3 evicts 2 (1 use vs 3) | 2 evicts 3 | 4 evicts 2
    assert hits == 2
    assert order == [4, 1]
    _, tie_order = run(LFUPolicy(), 2, [1, 2, 3])
    # 1 and 2 both have one use: the older one (1) goes
    assert tie_order == [2, 3]


def test_protected_keys_are_never_victims():
    policy = LRUPolicy()
    for key in (1, 2, 3):
        policy.insert(key)
    assert policy.victim([1, 2, 3]) == 1
    assert policy.victim([1, 2, 3], protected={1}) == 2
    assert policy.victim([1, 2], protected={1, 2}) is None


def test_make_policy_by_name_and_unknown_names():
    assert isinstance(make_policy("LRU"), LRUPolicy)
    assert isinstance(make_policy("fifo"), FIFOPolicy)
    with pytest.raises(ValueError, match="choose from lru, lfu, fifo"):
        make_policy("random")


@pytest.mark.parametrize("policy_class", [LRUPolicy, FIFOPolicy])
def test_an_ordered_policys_quick_victim_is_the_lowest_score_outside_the_protected(policy_class) -> None:
    """LRU and FIFO find a victim from their scores' order; on random traffic with random protected sets it is
    always the key the full search over every resident key picks."""
    import random

    rng = random.Random(7)
    policy, resident = policy_class(), {}
    for _ in range(3000):
        key = rng.randrange(40)
        if key in resident:
            policy.access(key)
        elif len(resident) < 24:
            resident[key] = True
            policy.insert(key)
        else:
            protected = set(rng.sample(sorted(resident), rng.randrange(24)))
            unprotected = [k for k in resident if k not in protected]
            expected = min(unprotected, key=lambda k: policy._score[k]) if unprotected else None
            victim = policy.victim(resident.keys(), protected)
            assert victim == expected
            if victim is not None:
                del resident[victim]
                policy.evict(victim)
                resident[key] = True
                policy.insert(key)
