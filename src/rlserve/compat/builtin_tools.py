"""Tools a tools.yaml can name without writing code: `calculator` (arithmetic, evaluated
from the syntax tree, never `eval`) and `code_interpreter` (Python in the rlserve sandbox).
"""

from __future__ import annotations

import ast
import operator
import threading
from collections.abc import Callable
from typing import Any

from rlserve.rl.tir import TIRConfig, code_to_run, format_output
from rlserve.sandbox import Sandbox
from rlserve.tools import ToolError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 1000
MAX_EXPRESSION_CHARS = 1000


def _schema(name: str, description: str, param: str, param_description: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {param: {"type": "string", "description": param_description}},
                "required": [param],
            },
        },
    }


CALCULATOR_SCHEMA = _schema(
    "calculator", "Evaluate an arithmetic expression.", "expression", "The expression."
)
CODE_INTERPRETER_SCHEMA = _schema(
    "code_interpreter", "Run Python code and return what it prints.", "code", "Python code."
)


def calculator(expression: str) -> str:
    """The value of an arithmetic `expression` (+ - * / // % ** and parentheses on
    numbers); ToolError, shown to the model, for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("expression must be a non-empty string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        value = _evaluate(tree.body)
    except SyntaxError:
        raise ToolError(f"cannot parse {expression!r}") from None
    except (ZeroDivisionError, OverflowError) as exc:
        raise ToolError(f"cannot evaluate {expression!r}: {exc}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is larger than {MAX_EXPONENT}")
        return _BINARY[type(node.op)](left, right)
    raise ToolError(f"unsupported syntax: {ast.unparse(node)!r} (numbers and + - * / // % **)")


class CodeInterpreter:
    """Runs the model's `code` in a `Sandbox` created on first use (closed by `close`).
    What the code printed (and its error) goes back to the model; a failure of the
    sandbox itself is an infrastructure error."""

    def __init__(self, timeout_s: float = 10.0, max_output_chars: int = 2000) -> None:
        self.config = TIRConfig(timeout_s=timeout_s, max_output_chars=max_output_chars)
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()

    def __call__(self, code: str) -> str:
        if not isinstance(code, str) or not code.strip():
            raise ToolError("code must be a non-empty string")
        result = self._box().run(code_to_run(code, self.config), timeout=self.config.timeout_s)
        if result.status == "sandbox_error":
            raise RuntimeError(f"sandbox error: {result.stderr.strip()}")
        return format_output(result, self.config)

    def _box(self) -> Sandbox:
        with self._lock:  # tools of one round run in several threads
            if self._sandbox is None:
                self._sandbox = Sandbox()
            return self._sandbox

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None


BUILTINS: dict[str, tuple[Callable[[], Callable[..., str]], dict]] = {
    "calculator": (lambda: calculator, CALCULATOR_SCHEMA),
    "code_interpreter": (CodeInterpreter, CODE_INTERPRETER_SCHEMA),
}
