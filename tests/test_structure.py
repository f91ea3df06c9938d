"""The layering of docs/ARCHITECTURE.md, checked on the source so that it stays true.

Every `rlserve.*` import in src/ is read with `ast` (imports inside functions count; those
under `if TYPE_CHECKING:` do not, as they never run) and checked against the layer table.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rlserve"

# Torch-free modules every layer may use.
TORCH_FREE_BASE = {"_checks", "pause_mode", "chat_messages", "sampling_params", "outputs"}
BASE = TORCH_FREE_BASE | {"config"}

# What each part may import, besides itself. Downward only: compat (the seed systems' API
# shapes), eval and server -> rl -> backends -> engine -> models; tools, sandbox and prompts
# are leaves; client is HTTP-only (torch-free base only).
ALLOWED: dict[str, set[str]] = {
    "_checks": set(),
    "chat_messages": set(),
    "outputs": set(),
    "pause_mode": {"_checks"},
    "sampling_params": {"_checks"},
    "config": {"_checks"},
    "models": BASE,
    "engine": {"models"} | BASE,
    "backends": {"engine", "models", "client"} | BASE,
    "rl": {"backends", "tools", "sandbox"} | BASE,
    "server": {"rl", "backends", "engine", "models", "tools", "sandbox"} | BASE,
    "tools": TORCH_FREE_BASE,
    "sandbox": {"_checks"},
    "client": TORCH_FREE_BASE,
    "prompts": TORCH_FREE_BASE,
    "eval": {"backends", "rl", "tools", "sandbox", "prompts", "client", "engine", "models"} | BASE,
    "compat": {"backends", "rl", "tools", "sandbox", "client", "engine", "models"} | BASE,
    "cluster": {"server", "backends", "client", "engine", "models", "rl", "tools", "sandbox"}
    | BASE,
    "cli": {
        "__init__",
        "cluster",
        "eval",
        "server",
        "sandbox",
        "engine",
        "rl",
        "backends",
        "models",
        "tools",
    }
    | BASE,
    "__init__": set(),  # the package's lazy facade imports nothing at import time
}

MAX_FILE_LINES = 300


def part_of(module: str) -> str:
    """'rlserve.engine.core' -> 'engine'; 'rlserve' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def runtime_imports(path: Path, package: str) -> set[str]:
    """The rlserve modules `path` (a module of `package`) imports when it runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rlserve"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("rlserve"):
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


SOURCES = sorted(SRC.rglob("*.py"))


def test_the_layer_table_covers_every_part() -> None:
    parts = {part_of(module_name(p)) for p in SOURCES}
    assert parts <= set(ALLOWED), f"parts with no layer rule: {parts - set(ALLOWED)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_downward(path: Path) -> None:
    me = part_of(module_name(path))
    imports = runtime_imports(path, package_of(path))
    bad = sorted(m for m in imports if part_of(m) not in ALLOWED[me] | {me})
    assert not bad, f"{path.relative_to(SRC)} ({me}) imports above or beside itself: {bad}"


def test_the_checker_sees_a_bad_import(tmp_path: Path) -> None:
    """The walker finds imports in functions and skips TYPE_CHECKING blocks."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rlserve.server import app\n"
        "def f():\n    from rlserve.engine import Engine\n"
        "from . import parsers\n"
    )
    assert runtime_imports(source, "rlserve.tools") == {"rlserve.engine", "rlserve.tools"}


def test_no_source_file_is_too_long() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_the_client_never_imports_torch() -> None:
    code = "import sys, rlserve.client, rlserve.tools, rlserve.sandbox\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
