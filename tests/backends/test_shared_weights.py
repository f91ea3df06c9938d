"""The shared suite's weight and adapter tests (a fresh backend each, see conftest.py):
an update changes what the backend generates and scores and moves its policy version; a
LoRA adapter is run on once loaded; close() is idempotent."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from rlserve.backends import UNKNOWN_VERSION
from rlserve.config import BUNDLED_MODEL
from rlserve.models.loader import read_safetensors
from tests.backends.test_shared_suite import (
    IDS,
    MESSAGES,
    assert_version,
    greedy,
    max_diff,
    says_unsupported,
    supports,
)

NORM = "model.norm.weight"


def original_weights() -> dict[str, torch.Tensor]:
    return dict(read_safetensors(BUNDLED_MODEL / "model.safetensors"))


def changed(before, after) -> bool:
    return before.token_ids != after.token_ids or max_diff(before.logprobs, after.logprobs) > 1e-3


def test_update_weights_changes_outputs_and_moves_the_version(fresh):
    backend, files = fresh.backend, fresh.files
    before, version = greedy(backend, [IDS, MESSAGES]), backend.policy_version
    norm = original_weights()[NORM]
    if not supports(backend, "update_weights"):
        says_unsupported(backend, lambda: backend.update_weights({NORM: norm * 3}))
        return
    new_version = backend.update_weights({NORM: norm * 3})  # a state dict
    assert new_version == backend.policy_version
    assert new_version > version or new_version == UNKNOWN_VERSION
    scaled = greedy(backend, [IDS, MESSAGES])
    assert any(changed(b, a) for b, a in zip(before, scaled, strict=True))
    for out in scaled:
        assert_version(out, backend)
        (score,) = backend.score([(out.prompt_token_ids, out.token_ids)])
        assert max_diff(score, out.logprobs) <= 1e-4  # scored on the new weights too
    path = files / "restore.safetensors"
    save_file({NORM: norm.contiguous()}, str(path))
    restored_version = backend.update_weights(str(path), version=new_version + 5)  # a path
    assert restored_version in (new_version + 5, UNKNOWN_VERSION)
    for b, a in zip(before, greedy(backend, [IDS, MESSAGES]), strict=True):
        assert a.token_ids == b.token_ids and max_diff(a.logprobs, b.logprobs) <= 1e-5


def test_update_weights_refuses_a_stale_version_and_bad_values(fresh):
    backend = fresh.backend
    if not supports(backend, "update_weights"):
        says_unsupported(backend, lambda: backend.update_weights(str(fresh.files)))
        return
    norm = original_weights()[NORM]
    with pytest.raises(Exception, match="version"):
        backend.update_weights({NORM: norm}, version=backend.policy_version)
    with pytest.raises(Exception, match="shape"):
        backend.update_weights({NORM: norm[:-1]})
    with pytest.raises(Exception, match="weights"):
        backend.update_weights(42)  # type: ignore[arg-type]


def test_load_adapter_runs_requests_on_it_and_close_is_idempotent(fresh, adapter):
    backend, path = fresh.backend, adapter
    if not supports(backend, "load_adapter"):
        says_unsupported(backend, lambda: backend.load_adapter("tuned", path))
    else:
        before = greedy(backend, [IDS, MESSAGES])
        backend.load_adapter("tuned", path)
        after = greedy(backend, [IDS, MESSAGES])
        assert any(changed(b, a) for b, a in zip(before, after, strict=True))
        for out in after:
            assert_version(out, backend)
            (score,) = backend.score([(out.prompt_token_ids, out.token_ids)])
            assert max_diff(score, out.logprobs) <= 1e-4  # scored on the adapter too
        with pytest.raises(Exception, match="adapter"):
            backend.load_adapter("other", str(fresh.files / "no_such_adapter"))
    backend.close()
    backend.close()
