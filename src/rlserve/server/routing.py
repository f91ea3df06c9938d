"""Which RequestGroup each engine request belongs to, and delivering step() deltas there.

Engine thread only. An HTTP request with several prompts is several engine requests;
`Routes` maps each engine request id to its group and the prompt's index in it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from rlserve.outputs import RequestOutput
from rlserve.server.loop_errors import EngineFailure
from rlserve.server.request_group import Delivery, RequestGroup, deliver_all

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

log = logging.getLogger(__name__)


class Routes:
    """Engine request id -> (its group, the prompt's index in the group)."""

    def __init__(self, engine: EngineCore) -> None:
        self.engine = engine
        self._routes: dict[str, tuple[RequestGroup, int]] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, group: RequestGroup) -> int:
        """Hand every prompt of `group` to the engine, or none (the group learns which);
        returns how many sequences were added."""
        added: list[str] = []
        try:
            for index, (engine_id, prompt) in enumerate(
                zip(group.engine_ids, group.prompts, strict=True)
            ):
                self.engine.add_request(prompt, group.params, engine_id, lora_name=group.lora_name)
                added.append(engine_id)
                self._routes[engine_id] = (group, index)
        except Exception as exc:  # bad input: the engine names the problem
            for engine_id in added:
                self._routes.pop(engine_id, None)
                self.engine.abort(engine_id)
            group.resolve(exc)
            return 0
        group.resolve(None)
        return group.num_sequences

    def withdraw(self, group: RequestGroup) -> None:
        """Abort what the engine still runs of `group` and forget it."""
        for engine_id in group.engine_ids:
            if self._routes.pop(engine_id, None) is not None:
                self.engine.abort(engine_id)

    def deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand one step's deltas to their groups. A request the engine failed alone (its
        delta has `error`) fails its whole group, and only that group."""
        batch = sum(len(out.outputs) for out in outputs)
        by_loop: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
        failed: set[RequestGroup] = set()
        for out in outputs:
            route = self._routes.get(out.request_id)
            if route is None:
                continue  # aborted by its handler, or never routed
            group, index = route
            if out.error:
                self.withdraw(group)
                group.fail(EngineFailure(f"request failed in the engine: {out.error}"))
                failed.add(group)
                continue
            group.max_batch_size = max(group.max_batch_size, batch)
            if out.finished:
                del self._routes[out.request_id]
            by_loop.setdefault(group.loop, []).append((group, index, out))
        for loop, deliveries in by_loop.items():
            kept = [d for d in deliveries if d[0] not in failed]
            if kept:
                deliver_all(loop, kept)

    def abort_matching(self, request_id: str | None, reason: str) -> int:
        """Abort the requests whose engine id or caller's id match `request_id` (None:
        all); returns how many the engine aborted (the next step reports them)."""
        count = 0
        for engine_id, (group, _) in list(self._routes.items()):
            if (
                request_id is None
                or request_id in (engine_id, group.request_id)
                or engine_id.startswith(f"{request_id}-")
                or (group.request_id or "").startswith(f"{request_id}_")  # SGLang's rid_0, ...
            ):
                count += bool(self.engine.abort(engine_id, reason=reason))
        return count

    def fail_all(self, error: BaseException) -> None:
        """Abort every routed request and end its group with `error`."""
        groups = {group for group, _ in self._routes.values()}
        for engine_id in list(self._routes):
            try:
                self.engine.abort(engine_id)
            except Exception:
                log.exception("abort of %s failed", engine_id)
        self._routes.clear()
        for group in groups:
            group.fail(error)
