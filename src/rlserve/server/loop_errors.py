"""Why the engine loop refused or ended a request (each maps onto one HTTP status)."""


class Overloaded(Exception):
    """The waiting queue is full; the request was not taken (HTTP 429)."""


class TooManySequences(Exception):
    """One request has more sequences than the queue may ever hold (HTTP 400)."""


class EngineUnavailable(Exception):
    """The engine thread is not running (startup failed, crashed or shutting down)."""


class EngineFailure(Exception):
    """`EngineCore.step()` raised; the requests it was running were aborted."""
