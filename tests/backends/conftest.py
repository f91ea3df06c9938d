"""Fixtures of the shared backend suite: `backend`, one module-scoped instance of every
backend kind (native, huggingface, remote, tinker), `fresh`, a new one per test for the
tests that change weights or adapters, and `reference`, the Hugging Face backend that the
others are compared with.

The remote backend talks to a real rlserve server on loopback; the tinker backend talks to
a local stand-in with the tinker SDK's method signatures (the Tinker service cannot be
reached from here): both come from tests/support/remote_backends.py.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlserve.backends import EngineBackend, InferenceBackend

KINDS = ["native", "huggingface", "remote", "tinker"]
if importlib.util.find_spec("tests.support.remote_backends") is None:  # not written yet
    KINDS = ["native", "huggingface"]


@dataclass
class Case:
    """A backend under test, and a folder where it can read the files (weights, adapters)
    the tests hand it by path."""

    kind: str
    backend: InferenceBackend
    files: Path


@contextmanager
def open_case(kind: str, files: Path, make_engine: Any) -> Iterator[Case]:
    if kind == "native":
        backend: Any = EngineBackend(make_engine(None, num_blocks=128, block_size=8))
    elif kind == "huggingface":
        from rlserve.backends.huggingface import HuggingFaceBackend

        backend = HuggingFaceBackend()
    else:
        from tests.support import remote_backends

        opened = (
            remote_backends.remote_backend(files)
            if kind == "remote"
            else remote_backends.tinker_backend()
        )
        with opened as backend:
            yield Case(kind, backend, files)
        return
    try:
        yield Case(kind, backend, files)
    finally:
        backend.close()


@pytest.fixture(scope="module", params=KINDS)
def case(request, make_engine, tmp_path_factory) -> Iterator[Case]:
    """Every backend kind, shared by the tests of a module that leave it as they found it."""
    with open_case(request.param, tmp_path_factory.mktemp(request.param), make_engine) as c:
        yield c


@pytest.fixture(params=KINDS)
def fresh(request, make_engine, tmp_path) -> Iterator[Case]:
    """Every backend kind, new for one test (which may change its weights or adapters)."""
    with open_case(request.param, tmp_path, make_engine) as c:
        yield c


@pytest.fixture(scope="module")
def backend(case: Case) -> InferenceBackend:
    return case.backend


@pytest.fixture(scope="session")
def adapter_source(tmp_path_factory) -> Path:
    """A random-weight (not zero-initialised) PEFT LoRA adapter of the bundled model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlserve.config import BUNDLED_MODEL

    folder = tmp_path_factory.mktemp("adapter") / "tuned"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(folder)
    return folder


@pytest.fixture
def adapter(fresh: Case, adapter_source: Path) -> str:
    """The adapter, copied where `fresh`'s backend reads files (a server's --weights-dir)."""
    return str(shutil.copytree(adapter_source, fresh.files / "adapter"))


@pytest.fixture(scope="session")
def reference() -> Iterator[Any]:
    """The Hugging Face backend on the bundled model in fp32: the reference."""
    from rlserve.backends.huggingface import HuggingFaceBackend

    ref = HuggingFaceBackend()
    yield ref
    ref.close()
