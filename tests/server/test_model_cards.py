"""`/v1/models` cards as vLLM's `show_available_models` writes them (`serving_models.py`):
an adapter's `root` is the path it was loaded from and its `parent` the base model's id;
its `max_model_len` is the base model's (vLLM leaves it null)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx

from rlserve.server.openai_routes import model_cards
from tests.server.test_server_lora import adapter, lora_server  # noqa: F401  (fixtures)
from tests.support.servers import RunningServer


def test_adapter_card_names_its_path_and_parent(lora_server: RunningServer, adapter: Path) -> None:  # noqa: F811
    base, card = httpx.get(lora_server.url + "/v1/models").json()["data"]
    state = lora_server.app.state.rlserve
    assert base["root"] == state.model_path and base["parent"] is None
    assert base["max_model_len"] == state.max_model_len
    assert card["id"] == adapter.name and card["root"] == str(adapter)
    assert card["parent"] == base["id"] and card["max_model_len"] == base["max_model_len"]
    assert card["object"] == "model" and card["owned_by"] == base["owned_by"]
    one = httpx.get(f"{lora_server.url}/v1/models/{card['id']}").json()
    assert one == card


def test_adapter_without_a_known_path_is_its_own_root() -> None:
    state = SimpleNamespace(
        model_name="base",
        model_path="/models/base",
        created=1,
        max_model_len=2048,
        adapters=lambda: ["known", "uploaded"],
        adapter_roots={"known": "/weights/known"},
    )
    cards = model_cards(state)  # type: ignore[arg-type]
    assert [c["root"] for c in cards] == ["/models/base", "/weights/known", "uploaded"]
    assert [c["parent"] for c in cards] == [None, "base", "base"]
    assert {c["max_model_len"] for c in cards} == {2048}
