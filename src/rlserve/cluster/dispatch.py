"""The `Cluster` API's requests: each prompt's `n` samples go to one replica chosen by the
routing policy; samples lost to a replica's failure are retried on another one."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlserve.backends.base import Request, Sample
from rlserve.backends.complete import Completion, completion_of_sample, sample_seed
from rlserve.cluster.replica import Replica
from rlserve.cluster.routing_policy import NoReplica, RoutingKey, choose_replica, routing_key
from rlserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from rlserve.backends.remote import RemoteBackend
    from rlserve.cluster.replica_set import ReplicaSet

# How RemoteBackend reports a replica that failed (not the request): the client's
# connection errors and 502/503/504. A 500 is that replica's answer to this request (as
# the router treats it): retrying a request that breaks engines would spread the damage.
REPLICA_FAILURES = (
    "APIConnectionError",
    "APITimeoutError",
    *(f"APIStatusError: HTTP {status}" for status in (502, 503, 504)),
)


@dataclass(frozen=True)
class Group:
    """One prompt and its sampling params (all `n` samples stay on one replica)."""

    prompt_ids: list[int]
    params: SamplingParams
    key: RoutingKey

    @classmethod
    def of(cls, prompt_ids: list[int], params: SamplingParams, session: str | None) -> Group:
        body: dict[str, Any] = {"prompt": prompt_ids}
        if session is not None:
            body["user"] = session
        return cls(prompt_ids, params, routing_key(body, {}))

    def requests(self) -> list[Request]:
        return [
            (
                self.prompt_ids,
                dataclasses.replace(self.params, n=1, seed=sample_seed(self.params.seed, i)),
            )
            for i in range(self.params.n)
        ]


def replica_failed(sample: Sample) -> bool:
    """Whether `sample` failed because of its replica (then it is retried elsewhere)."""
    return sample.error is not None and sample.error.startswith(REPLICA_FAILURES)


class Dispatcher:
    """Runs groups on the replicas of `rs` (`backend_for(replica)`: its RemoteBackend)."""

    def __init__(
        self,
        rs: ReplicaSet,
        routing: str,
        backend_for: Callable[[Replica], RemoteBackend],
        on_replica_failure: Callable[[Replica, str], None],
    ) -> None:
        self._rs = rs
        self._routing = routing
        self._backend_for = backend_for
        self._on_failure = on_replica_failure
        self._lock = threading.Lock()  # `outstanding` is shared with the health loop's view

    def run(self, group: Group) -> tuple[list[Sample], list[str]]:
        """The group's samples in order, and the replica that made each one ("" if none)."""
        requests = group.requests()
        samples: dict[int, Sample] = {}
        served: dict[int, str] = {}
        pending = list(range(len(requests)))
        tried: set[str] = set()
        while pending:
            try:
                replica = self._take(group.key, tried)
            except NoReplica as exc:
                for k in pending:
                    samples[k] = Sample.failed(f"NoReplica: {exc}")
                break
            got = self._on(replica, [requests[k] for k in pending])
            lost = [k for k, s in zip(pending, got, strict=True) if replica_failed(s)]
            for k, sample in zip(pending, got, strict=True):
                samples[k], served[k] = sample, replica.name
            if lost:
                self._on_failure(replica, samples[lost[0]].error or "failed")
                tried.add(replica.name)
                if len(tried) > self._rs.config.request_retries:
                    break
            pending = lost
        order = range(len(requests))
        return [samples[k] for k in order], [served.get(k, "") for k in order]

    def _take(self, key: RoutingKey, tried: set[str]) -> Replica:
        """Choose a replica and count the request on it, in one step (so that concurrent
        groups see each other under least-outstanding)."""
        with self._lock:
            replica = choose_replica(self._routing, self._rs.routable(), key, tried)
            replica.outstanding += 1
            return replica

    def _on(self, replica: Replica, requests: list[Request]) -> list[Sample]:
        """The samples of `requests` on `replica` (already counted by `_take`)."""
        try:
            got: dict[int, Sample] = {}
            self._backend_for(replica).generate(requests, got.__setitem__)
        finally:
            with self._lock:
                replica.outstanding -= 1
        missing = Sample.failed("APIConnectionError: the replica reported no sample")
        return [got.get(k, missing) for k in range(len(requests))]


@dataclass
class ClusterCompletion(Completion):
    """A `Completion` and the replica that made it ("" when none could)."""

    replica: str = ""


def completion_of(
    tokenizer: Any, prompt: list[int], sample: Sample, replica: str
) -> ClusterCompletion:
    """The completion of one sample made on `replica`."""
    completion = completion_of_sample(tokenizer, prompt, sample)
    return ClusterCompletion(**vars(completion), replica=replica)
