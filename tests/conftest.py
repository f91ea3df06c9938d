import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlserve import Engine
from tests.support.checkpoints import FAMILIES, build_checkpoint

_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict:
    """family name -> folder of a random-weight checkpoint of that family."""
    root = tmp_path_factory.mktemp("ckpt")
    return {name: build_checkpoint(root / name, name) for name in FAMILIES}


@pytest.fixture(scope="session")
def make_engine():
    """Build engines that the leak check below watches."""

    def make(*args, **kwargs) -> Engine:
        engine = Engine(*args, **kwargs)
        _ENGINES.add(engine)
        return engine

    return make


@pytest.fixture(scope="session")
def bundled(make_engine) -> Engine:
    return make_engine()


@pytest.fixture(scope="session")
def qwen3(make_engine, checkpoints) -> Engine:
    return make_engine(checkpoints["qwen3"], num_blocks=256, block_size=8)


@pytest.fixture
def workdir_root() -> Iterator[Path]:
    """A parent for the sandbox's work dirs that sandbox uids can traverse."""
    path = Path(tempfile.mkdtemp(prefix="rlserve-test-workdirs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leaked_blocks():
    """After every test, every engine is idle with all KV blocks free."""
    yield
    for engine in list(_ENGINES):
        assert not engine.has_unfinished_requests(), "requests left unfinished"
        assert engine.block_manager.num_used_blocks == 0, "KV blocks leaked"
