"""Routing policies (units, no replicas started): least outstanding, the hash ring's
spread and stability, session and prefix keys from real RL clients' request bodies."""

from __future__ import annotations

import collections

import pytest

from rlserve.cluster.replica import Replica
from rlserve.cluster.routing_policy import (
    NoReplica,
    RoutingKey,
    canonical_policy,
    choose_replica,
    routing_key,
)


def replicas(*names: str, outstanding: tuple[int, ...] = ()) -> list[Replica]:
    loads = outstanding or (0,) * len(names)
    return [
        Replica(name, "ray", "rlserve", url=f"http://h/{name}", healthy=True, outstanding=n)
        for name, n in zip(names, loads, strict=True)
    ]


def test_least_outstanding_picks_the_idlest_and_breaks_ties_by_name():
    pool = replicas("ray-1", "ray-0", "ray-2", outstanding=(3, 1, 1))
    assert choose_replica("least_outstanding", pool, RoutingKey()).name == "ray-0"
    assert choose_replica("least_outstanding", pool, RoutingKey(), {"ray-0"}).name == "ray-2"


def test_no_replica_left_names_the_tried_ones():
    pool = replicas("ray-0", "ray-1")
    with pytest.raises(NoReplica, match="tried: ray-0, ray-1"):
        choose_replica("least_outstanding", pool, RoutingKey(), {"ray-0", "ray-1"})
    with pytest.raises(NoReplica):
        choose_replica("session", [], RoutingKey(session="s"))


def test_ring_spreads_sessions_over_replicas():
    pool = replicas("ray-0", "ray-1", "ray-2", "remote-0")
    counts = collections.Counter(
        choose_replica("session", pool, RoutingKey(session=f"user:{i}")).name for i in range(4000)
    )
    assert set(counts) == {r.name for r in pool}
    assert min(counts.values()) > 4000 / 4 * 0.5, counts  # 64 virtual nodes: no starving


def test_a_replica_leaving_moves_only_its_own_sessions():
    pool = replicas("ray-0", "ray-1", "ray-2")
    keys = [RoutingKey(session=f"s{i}") for i in range(600)]
    before = {k: choose_replica("session", pool, k).name for k in keys}
    after = {k: choose_replica("session", pool, k, exclude={"ray-1"}).name for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved and all(before[k] == "ray-1" for k in moved)
    assert all(after[k] != "ray-1" for k in keys)


def test_affinity_without_a_key_falls_back_to_least_outstanding():
    pool = replicas("ray-0", "ray-1", outstanding=(5, 0))
    assert choose_replica("session", pool, RoutingKey(prefix="p")).name == "ray-1"
    assert choose_replica("prefix", pool, RoutingKey(session="s")).name == "ray-1"


def test_session_key_sources_in_order():
    chat = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}
    slime_headers = {"X-SMG-Routing-Key": "sample-7"}  # slime's header to SGLang's gateway
    assert routing_key(chat, slime_headers).session == "header:sample-7"
    assert routing_key(chat, {"x-session-id": "abc"}).session == "header:abc"
    assert routing_key({**chat, "user": "u1"}, {}).session == "user:u1"
    assert routing_key({**chat, "session_params": {"session_id": "q"}}, {}).session == "session:q"
    first = routing_key(chat, {}).session
    assert first is not None and first.startswith("first_user:")
    later_turn = {"messages": [*chat["messages"], {"role": "assistant", "content": "x"}]}
    assert routing_key(later_turn, {}).session == first  # turns of one chat share it
    other = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "yo"}]}
    assert routing_key(other, {}).session != first  # a shared system prompt does not
    assert routing_key({"prompt": "abc"}, {}).session is None


def test_prefix_key_of_slime_and_verl_bodies():
    # slime's /generate body to an SGLang router (miles generate_hub: input_ids +
    # sampling_params + return_logprob).
    ids = list(range(40))
    slime = {"input_ids": ids, "sampling_params": {"max_new_tokens": 8}, "return_logprob": True}
    same_head = {**slime, "input_ids": ids[:16] + [999] * 30}
    other_head = {**slime, "input_ids": [7] + ids}
    assert routing_key(slime, {}).prefix == routing_key(same_head, {}).prefix
    assert routing_key(slime, {}).prefix != routing_key(other_head, {}).prefix
    # Token-id completions prompts (what verl-style rollouts send), a batch, and text.
    assert routing_key({"prompt": ids}, {}).prefix == routing_key(slime, {}).prefix
    assert routing_key({"prompt": [ids, [1, 2]]}, {}).prefix == routing_key(slime, {}).prefix
    text = "x" * 64
    assert routing_key({"prompt": text + "a"}, {}).prefix == routing_key({"text": text}, {}).prefix
    assert routing_key({"prompt": 5}, {}).prefix is None


def test_bad_bodies_give_no_keys():
    for body in (None, [], "text", 3, {"messages": "nope"}, {"input_ids": []}):
        assert routing_key(body, {}) == RoutingKey()


def test_policy_names_and_aliases():
    assert canonical_policy("consistent_hashing") == "session"  # SGLang's name
    assert canonical_policy("consistent_hash") == "session"  # vLLM router's
    assert canonical_policy("prefix_hash") == "prefix"
    with pytest.raises(ValueError, match="routing must be one of"):
        canonical_policy("round_robin")
    with pytest.raises(ValueError, match="routing"):
        choose_replica("bogus", replicas("ray-0"), RoutingKey())
