"""`Cluster`: many replicas as one engine, for trainers that drive rollouts in-process.

    with Cluster(num_replicas=2) as cluster:
        outs = cluster.generate(["What is 2 + 3?"], SamplingParams(max_tokens=16, n=4))
        cluster.update_weights("step-10/model.safetensors")  # every replica, or none

Requests reach the replicas over HTTP (one `RemoteBackend` each) and are spread by the
routing policy; a prompt's `n` samples stay on one replica. Admin calls fan out
(`fanout`): a weight update is staged and checked on every replica before any commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rlserve._checks import ParamError
from rlserve.backends.complete import Prompt, prompt_token_ids
from rlserve.cluster import fanout
from rlserve.cluster.config import ROUTING_POLICIES, ClusterConfig
from rlserve.cluster.control_loop import ControlLoop
from rlserve.cluster.dispatch import ClusterCompletion, Dispatcher, Group, completion_of
from rlserve.cluster.fanout_replies import FanoutReply
from rlserve.cluster.replica import Replica
from rlserve.cluster.replica_set import ReplicaSet
from rlserve.cluster.request_bodies import JSON, bundled_model, encoded, sessions_of, update_request
from rlserve.pause_mode import PauseMode
from rlserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from rlserve.backends.remote import RemoteBackend

MAX_GROUPS_IN_FLIGHT = 64


class ClusterError(RuntimeError):
    """An admin call the cluster refused or that failed on some replica: `status` and the
    merged reply `body` (its `failed` names each failed replica and why)."""

    def __init__(self, reply: FanoutReply) -> None:
        error = reply.body.get("error") or {}
        super().__init__(f"HTTP {reply.status}: {error.get('message', reply.body)}")
        self.status = reply.status
        self.body = reply.body


class Cluster:
    """`num_replicas` Ray replicas of `model` (None: the bundled model) plus the servers
    at `backend_urls`, or the cluster a `ClusterConfig` describes (pass it as `model`).
    Starts at once and waits until every replica is healthy; `close()` stops it."""

    def __init__(
        self,
        model: str | ClusterConfig | None = None,
        num_replicas: int = 2,
        *,
        backend_urls: Sequence[str] = (),
        routing: str = "least_outstanding",
        ray_address: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(model, ClusterConfig):
            config = model
        else:
            config = ClusterConfig(
                model=model,
                num_replicas=num_replicas,
                backend_urls=tuple(backend_urls),
                routing=routing,
                ray_address=ray_address,
                engine_options=dict(engine_options or {}),
            )
        replicas = ReplicaSet(config)
        replicas.start()
        self._setup(replicas, config.routing, owns=True)

    @classmethod
    def over(cls, replicas: ReplicaSet, routing: str | None = None) -> Cluster:
        """A Cluster over an already started ReplicaSet, which `close()` leaves running;
        `routing` overrides its config's policy for this Cluster's requests."""
        if not isinstance(replicas, ReplicaSet):
            raise TypeError(f"replicas must be a ReplicaSet, got {type(replicas).__name__}")
        if routing is not None and routing not in ROUTING_POLICIES:
            raise ParamError("routing", f"routing must be one of {list(ROUTING_POLICIES)}")
        cluster = cls.__new__(cls)
        cluster._setup(replicas, routing or replicas.config.routing, owns=False)
        return cluster

    def _setup(self, replicas: ReplicaSet, routing: str, owns: bool) -> None:
        from rlserve.server.app import load_tokenizer

        config = replicas.config
        self.replicas = replicas
        self._owns = owns
        model_path = config.model or str(bundled_model())
        self.tokenizer = load_tokenizer(model_path)
        self._backends: dict[str, tuple[str, RemoteBackend]] = {}
        self._control = ControlLoop(replicas)
        self._dispatcher = Dispatcher(replicas, routing, self._backend_for, self._replica_failed)
        self._closed = False

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | None = None,
        *,
        sessions: Sequence[str | None] | None = None,
    ) -> list[list[ClusterCompletion]]:
        """`params.n` completions of each prompt (text, token ids or chat messages), in
        order. `sessions[i]` is prompt i's session key (affinity under routing="session").
        A sample no replica could make has `error` set; nothing is dropped."""
        self._check_open()
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ParamError("prompts", "prompts must be a non-empty list of prompts")
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ParamError("params", f"params must be a SamplingParams, got {params!r:.80}")
        keys = sessions_of(sessions, len(prompts))
        ids = [prompt_token_ids(self.tokenizer, prompt) for prompt in prompts]
        groups = [Group.of(p, params, key) for p, key in zip(ids, keys, strict=True)]
        workers = max(1, min(len(groups), MAX_GROUPS_IN_FLIGHT))
        with ThreadPoolExecutor(workers, thread_name_prefix="rlserve-cluster") as pool:
            results = list(pool.map(self._dispatcher.run, groups))
        return [
            [
                completion_of(self.tokenizer, g.prompt_ids, s, name)
                for s, name in zip(*result, strict=True)
            ]
            for g, result in zip(groups, results, strict=True)
        ]

    def update_weights(
        self, weights: str | Mapping[str, torch.Tensor], version: int | None = None
    ) -> int:
        """Install `weights` on every replica or on none: a checkpoint path the replicas
        read (under their --weights-dir) or a state dict (streamed). The cluster's new
        policy version; ClusterError naming the replicas that refused."""
        self._check_open()
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise ParamError("version", f"version must be an int or None, got {version!r}")
        body, content_type, query = update_request(weights, version)
        reply = self._admin(
            fanout.update_weights(
                self.replicas, self._control.client, body, content_type, {}, query
            )
        )
        return int(reply["policy_version"])

    def load_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter at `path` (a path the replicas read) as `name` on every
        replica; if one fails it is unloaded from the others (ClusterError)."""
        for field, value in (("name", name), ("path", path)):
            if not isinstance(value, str) or not value:
                raise ParamError(field, f"{field} must be a non-empty string, got {value!r}")
        body = encoded({"adapter_name": name, "adapter_path": path})
        self._admin(
            fanout.load_adapter(
                self.replicas, self._control.client, "/load_adapter", body, JSON, {}
            )
        )

    def unload_adapter(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ParamError("name", f"name must be a non-empty string, got {name!r}")
        self._broadcast("/unload_adapter", {"adapter_name": name})

    def pause(self, mode: str | PauseMode = "keep") -> None:
        """Pause every replica (`mode`: keep / wait / abort, as on one server)."""
        try:
            mode = PauseMode(mode)
        except ValueError:
            raise ParamError(
                "mode", f"mode must be one of {[m.value for m in PauseMode]}"
            ) from None
        self._broadcast("/pause", {"mode": mode.value})

    def resume(self) -> None:
        self._broadcast("/resume", {})

    def abort(self) -> int:
        """Abort every running request on every replica; how many were aborted."""
        reply = self._broadcast("/abort", {})
        rows = reply["replicas"].values()
        return sum(int(row["reply"].get("aborted", 0)) for row in rows)

    @property
    def policy_version(self) -> int:
        """The cluster's one policy version (VersionSplit if replicas disagree)."""
        self._check_open()
        return self._control.run(fanout.policy_version(self.replicas, self._control.client))

    def health(self) -> dict[str, Any]:
        """Every replica's row (name, kind, url, healthy, outstanding, restarts, ...)."""
        rows = [r.describe() for r in self.replicas.replicas]
        return {"healthy": sum(bool(r["healthy"]) for r in rows), "replicas": rows}

    def check_health(self) -> None:
        """One health round now (the background loop runs one every health_interval_s)."""
        self._check_open()
        self._control.check_now()

    def close(self) -> None:
        """Stop the background loop, the clients, and (if this Cluster started them) the
        replicas; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._control.close()
        for _, backend in self._backends.values():
            backend.close()
        if self._owns:
            self.replicas.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin(self, coro: Any) -> dict[str, Any]:
        self._check_open()
        reply = self._control.run(coro)
        if reply.status != 200:
            raise ClusterError(reply)
        return reply.body

    def _broadcast(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._admin(
            fanout.broadcast(
                self.replicas, self._control.client, "POST", path, encoded(body), JSON, {}
            )
        )

    def _backend_for(self, replica: Replica) -> RemoteBackend:
        """The replica's RemoteBackend (a new one when its URL changed: a restart)."""
        from rlserve.backends.remote import RemoteBackend
        from rlserve.client import Client

        assert replica.url is not None
        known = self._backends.get(replica.name)
        if known is not None and known[0] == replica.url:
            return known[1]
        config = self.replicas.config
        client = Client(
            replica.url,
            api_key=config.api_key,
            admin_key=config.admin_key,
            tokenizer=self.tokenizer,
            max_retries=0,
        )
        backend = RemoteBackend(client, dialect=replica.dialect)
        backend._owns_client = True  # closed with the backend
        self._backends[replica.name] = (replica.url, backend)
        if known is not None:
            known[1].close()
        return backend

    def _replica_failed(self, replica: Replica, error: str) -> None:
        self.replicas.mark_unhealthy(replica, error)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the Cluster is closed")
