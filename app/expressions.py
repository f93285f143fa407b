"""The expression sandbox: population expressions over catalogue columns, evaluated at bounded cost.

An expression such as ``prot_days < 7 and binary_class == 'close_sync'`` comes from a visitor's text box or
from a shared URL, so it is untrusted. It is parsed with :mod:`ast` (which never evaluates anything),
checked against a whitelist, type-checked against the star table's columns and *compiled* into a small
tree of numpy operations. Nothing is handed to ``eval``, pandas or Python arithmetic on user constants:

- numbers become float64 at compile time; a literal beyond 1e300, an integer literal of more than 30
  digits or a power whose exponent is a constant beyond ``MAX_EXPONENT`` is refused; powers of columns
  overflow to inf in numpy instead of growing Python integers (``9**9**9**9`` would otherwise hold the
  interpreter lock for ever);
- strings and lists are never multiplied or added: a list of constants is only allowed on the right of
  ``in`` / ``not in`` (at most ``MAX_LIST`` items), a string only compared with a categorical column;
- ``&``, ``|`` and ``~`` mean ``and``, ``or`` and ``not``, with their precedence, as in ``pandas.query``;
- the expression has at most ``MAX_LENGTH`` characters and ``MAX_NODES`` syntax nodes, so its cost is at
  most ``MAX_NODES`` vectorised passes over the table; categorical columns are compared through integer
  codes, so every pass is a numpy loop that releases the interpreter lock (the server keeps answering
  other visitors while it runs), and evaluation stops with a message after ``MAX_SECONDS``.

    >>> schema = app_data.schema          # AppData: the star table's numeric, boolean and categorical columns
    >>> expr = compile_expression("teff > 6000 and binary_class in ['single', 'wide']", schema)
    >>> mask = expr.evaluate(columns)        # columns: name -> numpy array (codes for categoricals)
"""
from __future__ import annotations

import ast
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MAX_LENGTH = 1000
MAX_NODES = 200
MAX_LIST = 256
MAX_EXPONENT = 64.0
MAX_ABS_LITERAL = 1e300
MAX_INT_DIGITS = 30
MAX_SECONDS = 5.0

NUM, BOOL, CAT, STR, LIST = "number", "true/false", "category", "text", "list"


class ExpressionError(ValueError):
    """An expression that is refused or cannot be evaluated; the message says why, in the user's terms."""


@dataclass
class Schema:
    """What an expression may name: numeric and boolean columns, and categorical columns with their values."""

    numeric: set = field(default_factory=set)
    boolean: set = field(default_factory=set)
    categories: dict = field(default_factory=dict)  # column -> list of category strings (code = position)

    def kind(self, name: str) -> str | None:
        if name in self.numeric:
            return NUM
        if name in self.boolean:
            return BOOL
        if name in self.categories:
            return CAT
        return None

    @property
    def names(self) -> list[str]:
        return sorted(self.numeric | self.boolean | set(self.categories))


# --------------------------------------------------------------------------------------- compiled nodes
@dataclass
class Node:
    kind: str
    fn: Callable | None = None          # columns -> array (or a constant for constant nodes)
    value: object = None                # for constants
    columns: tuple = ()

    @property
    def constant(self) -> bool:
        return self.fn is None


def _const(kind, value) -> Node:
    return Node(kind, None, value)


def _run(node: Node, env: "_Env"):
    if node.constant:
        return node.value
    env.tick()
    return node.fn(env)


class _Env:
    def __init__(self, columns, deadline: float):
        self.columns, self.deadline = columns, deadline

    def tick(self):
        if time.perf_counter() > self.deadline:
            raise ExpressionError(f"the expression took longer than {MAX_SECONDS:g} s and was stopped")

    def column(self, name):
        return self.columns(name) if callable(self.columns) else self.columns[name]


_ARITH = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
          ast.Mod: np.mod, ast.FloorDiv: np.floor_divide, ast.Pow: np.power}
_ORDER = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal}
_EQ = {ast.Eq: np.equal, ast.NotEq: np.not_equal}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%", ast.FloorDiv: "//",
           ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
           ast.In: "in", ast.NotIn: "not in"}


@dataclass
class Compiled:
    text: str
    root: Node
    columns: list[str]

    def evaluate(self, columns, n: int, max_seconds: float = MAX_SECONDS) -> np.ndarray:
        """Boolean mask over ``n`` stars. ``columns``: name -> float array (numeric/boolean) or int16 codes
        (categorical), a mapping or a callable."""
        env = _Env(columns, time.perf_counter() + max_seconds)
        with np.errstate(all="ignore"):
            out = _run(self.root, env)
        out = np.asarray(out)
        if out.shape != (n,):
            raise ExpressionError(f"{self.text!r} does not depend on any column: it must give true/false "
                                  f"for each star")
        return out.astype(bool, copy=False)


class _Compiler:
    def __init__(self, text: str, schema: Schema):
        self.text, self.schema = text, schema
        self.used: list[str] = []

    def fail(self, msg):
        raise ExpressionError(msg)

    # -- leaves
    def number(self, v) -> Node:
        if isinstance(v, bool):
            return _const(BOOL, bool(v))
        if isinstance(v, int) and len(str(abs(v))) > MAX_INT_DIGITS:
            self.fail(f"the number {str(v)[:12]}... is too large ({MAX_INT_DIGITS} digits at most)")
        f = float(v)
        if not math.isfinite(f) or abs(f) > MAX_ABS_LITERAL:
            self.fail(f"the number {v!r} is too large")
        return _const(NUM, np.float64(f))

    def visit(self, node) -> Node:
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, (bool, int, float)):
                return self.number(v)
            if isinstance(v, str):
                if len(v) > 200:
                    self.fail("a text constant may have at most 200 characters")
                return _const(STR, v)
            self.fail(f"the constant {v!r} is not allowed")
        if isinstance(node, ast.Name):
            if node.id in ("True", "False"):  # not constants in some parsers' eyes
                return _const(BOOL, node.id == "True")
            kind = self.schema.kind(node.id)
            if kind is None:
                self.fail(f"unknown column {node.id!r}; columns: {', '.join(self.schema.names)}")
            self.used.append(node.id)
            name = node.id
            return Node(kind, lambda env, name=name: env.column(name), columns=(name,))
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > MAX_LIST:
                self.fail(f"a list may have at most {MAX_LIST} items")
            items = [self.visit(e) for e in node.elts]
            if not all(i.constant and i.kind in (NUM, STR, BOOL) for i in items):
                self.fail("a list may only hold numbers or quoted text, e.g. ['single', 'wide']")
            return _const(LIST, [i.value for i in items])
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        self.fail(f"{type(node).__name__} is not allowed in an expression: use column names, numbers, quoted "
                  f"text, comparisons, arithmetic, and/or/not, in [...]")

    # -- operators
    def as_number(self, n: Node, what: str) -> Node:
        if n.kind == NUM:
            return n
        if n.kind == BOOL:  # True/False count as 1/0 in arithmetic, as in pandas
            if n.constant:
                return _const(NUM, np.float64(n.value))
            return Node(NUM, lambda env, n=n: np.asarray(_run(n, env), dtype=np.float64), columns=n.columns)
        self.fail(f"{what} needs numbers, not {n.kind}")

    def as_bool(self, n: Node, what: str) -> Node:
        if n.kind == BOOL:
            return n
        if n.kind == NUM and not n.constant:  # a 0/1 column used as a condition
            return Node(BOOL, lambda env, n=n: np.asarray(_run(n, env)) != 0, columns=n.columns)
        self.fail(f"{what} needs conditions (true/false), not {n.kind}")

    def unary(self, node: ast.UnaryOp) -> Node:
        a = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            a = self.as_bool(a, "not")
            if a.constant:
                return _const(BOOL, not a.value)
            return Node(BOOL, lambda env: np.logical_not(_run(a, env)), columns=a.columns)
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            a = self.as_number(a, "a sign")
            if isinstance(node.op, ast.UAdd):
                return a
            if a.constant:
                return _const(NUM, -a.value)
            return Node(NUM, lambda env: np.negative(_run(a, env)), columns=a.columns)
        self.fail(f"{type(node.op).__name__} is not allowed")

    def binop(self, node: ast.BinOp) -> Node:
        op = type(node.op)
        if op not in _ARITH:
            self.fail(f"the operator {type(node.op).__name__} is not allowed")
        sym = _SYMBOL[op]
        a = self.as_number(self.visit(node.left), f"'{sym}'")
        b = self.as_number(self.visit(node.right), f"'{sym}'")
        if op is ast.Pow and b.constant and abs(float(b.value)) > MAX_EXPONENT:
            self.fail(f"a power's exponent may be at most {MAX_EXPONENT:g}")
        if op is ast.Pow and not b.constant and a.constant and abs(float(a.value)) > 1e6:
            self.fail("a power of a column needs a base of at most 1e6")
        fn = _ARITH[op]
        if a.constant and b.constant:
            with np.errstate(all="ignore"):
                v = fn(np.float64(a.value), np.float64(b.value))
            if not np.isfinite(v):
                self.fail(f"{self.text!r}: a constant part overflows or divides by zero")
            return _const(NUM, np.float64(v))
        return Node(NUM, lambda env: fn(_run(a, env), _run(b, env)), columns=a.columns + b.columns)

    def _logical(self, fn, parts: list[Node], what: str) -> Node:
        parts = [self.as_bool(p, what) for p in parts]
        if all(p.constant for p in parts):
            v = parts[0].value
            for p in parts[1:]:
                v = bool(fn(v, p.value))
            return _const(BOOL, v)

        def run(env):
            out = _run(parts[0], env)
            for p in parts[1:]:
                out = fn(out, _run(p, env))
            return out
        return Node(BOOL, run, columns=sum((p.columns for p in parts), ()))

    def boolop(self, node: ast.BoolOp) -> Node:
        fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return self._logical(fn, [self.visit(v) for v in node.values], "and / or")

    def compare(self, node: ast.Compare) -> Node:
        parts = []
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            parts.append(self.compare_pair(left, type(op), right))
            left = right
        return parts[0] if len(parts) == 1 else self._logical(np.logical_and, parts, "a chained comparison")

    def compare_pair(self, a: Node, op, b: Node) -> Node:
        sym = _SYMBOL.get(op, type(op).__name__)
        if op in (ast.In, ast.NotIn):
            if b.kind != LIST:
                self.fail(f"'{sym}' needs a list on its right, e.g. binary_class in ['single', 'wide']")
            negate = op is ast.NotIn
            if a.kind == CAT:
                cats = self.schema.categories[a.columns[0]]
                bad = [v for v in b.value if not isinstance(v, str)]
                if bad:
                    self.fail(f"{a.columns[0]} holds text: quote the values, e.g. {a.columns[0]} in ['{cats[0]}']")
                codes = np.array([cats.index(v) for v in b.value if v in cats], dtype=np.int16)
                fn = lambda env: np.isin(_run(a, env), codes, invert=negate)  # noqa: E731
                return Node(BOOL, fn, columns=a.columns)
            a = self.as_number(a, f"'{sym}'")
            if any(isinstance(v, str) for v in b.value):
                self.fail(f"'{sym}': a numeric column cannot be compared with text")
            vals = np.array([float(v) for v in b.value], dtype=np.float64)
            if a.constant:
                return _const(BOOL, bool(np.isin(a.value, vals)) != negate)
            return Node(BOOL, lambda env: np.isin(_run(a, env), vals, invert=negate), columns=a.columns)
        if op not in _ORDER and op not in _EQ:
            self.fail(f"the comparison {sym} is not allowed")
        if a.kind == STR and b.kind == CAT:
            a, b = b, a
        if a.kind == CAT or b.kind == CAT:
            if op not in _EQ:
                self.fail(f"'{sym}' does not apply to the categorical column {(a if a.kind == CAT else b).columns[0]}: "
                          f"use == or != with quoted text")
            if a.kind == CAT and b.kind == STR:
                cats = self.schema.categories[a.columns[0]]
                code = np.int16(cats.index(b.value)) if b.value in cats else np.int16(-2)  # -2: matches nothing
                fn = _EQ[op]
                return Node(BOOL, lambda env: fn(_run(a, env), code), columns=a.columns)
            if a.kind == CAT and b.kind == CAT:
                ca, cb = self.schema.categories[a.columns[0]], self.schema.categories[b.columns[0]]
                # Map b's codes into a's categories once, then compare integers.
                remap = np.array([ca.index(v) if v in ca else -3 for v in cb] + [-4], dtype=np.int16)
                fn = _EQ[op]
                return Node(BOOL, lambda env: fn(_run(a, env), remap[_run(b, env)]) & (_run(a, env) >= 0),
                            columns=a.columns + b.columns)
            self.fail(f"the categorical column {(a if a.kind == CAT else b).columns[0]} can only be compared "
                      f"with quoted text")
        if a.kind == STR or b.kind == STR:
            self.fail("quoted text can only be compared with a categorical column "
                      f"({', '.join(self.schema.categories) or 'none here'})")
        a, b = self.as_number(a, f"'{sym}'"), self.as_number(b, f"'{sym}'")
        fn = _ORDER.get(op) or _EQ[op]
        if a.constant and b.constant:
            return _const(BOOL, bool(fn(a.value, b.value)))
        return Node(BOOL, lambda env: fn(_run(a, env), _run(b, env)), columns=a.columns + b.columns)


_PANDAS_OPERATORS = {"&": "and", "|": "or", "~": "not"}


def _as_python(text: str) -> str:
    """pandas-style ``&``, ``|``, ``~`` as ``and``, ``or``, ``not`` (what they mean in pandas.query, and with
    its precedence: in Python ``a < b & c`` would read ``a < (b & c)``). Quoted text is left alone."""
    import io
    import tokenize
    try:
        spans = [(t.start, t.end, _PANDAS_OPERATORS[t.string])
                 for t in tokenize.generate_tokens(io.StringIO(text).readline)
                 if t.type == tokenize.OP and t.string in _PANDAS_OPERATORS]
    except (tokenize.TokenError, SyntaxError, ValueError, IndentationError):
        return text   # the parser reports what is wrong with it
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    out = text
    for (r0, c0), (r1, c1), word in reversed(spans):
        a, b = starts[r0 - 1] + c0, starts[r1 - 1] + c1
        out = out[:a] + f" {word} " + out[b:]
    return out


def compile_expression(text: str, schema: Schema) -> Compiled:
    """Check and compile an expression; raises :class:`ExpressionError` saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the expression is empty")
    text = text.strip()
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is too long ({MAX_LENGTH} characters at most)")
    try:
        tree = ast.parse(_as_python(text), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse the expression: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError("cannot parse the expression") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise ExpressionError(f"the expression has {n_nodes} parts; {MAX_NODES} at most")
    c = _Compiler(text, schema)
    root = c.visit(tree)
    if root.kind not in (BOOL,) and not (root.kind == NUM and not root.constant):
        raise ExpressionError(f"{text!r} is not a condition: use a comparison, e.g. teff > 6000")
    if root.kind == NUM:
        root = c.as_bool(root, "the expression")
    return Compiled(text, root, sorted(set(c.used)))
