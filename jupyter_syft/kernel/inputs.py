"""What a cell takes from the kernel: the values and modules its free names stand for.

A `%%request` cell runs on the domain as one function of its data sources; a name the cell
reads but does not bind (`threshold`, `np`) would be a NameError there after the owner's
review. So before anything is sent, each such name is looked up here, in the kernel:

- a value that can travel as data (None, bools, numbers, strings, bytes; lists, tuples and
  dicts of them; numpy scalars, numpy arrays and torch tensors of plain dtypes), up to
  MAX_INPUT_CHARS characters of source, becomes an assignment at the top of the function, as a
  Python literal the owner reads beside the code (`threshold = 30`);
- a module of an installed package or of the standard library (`np`, `pd`, `torch`, `math`),
  and a function or class importable from one (`from scipy.stats import pearsonr`), is
  imported again there, by the same name;
- anything else (a function or class defined in this kernel, a module of your own files, a
  DataFrame, an open file, a value too large) is refused with one line naming it and what to do.

`%%mock` runs that same function on the mocks, so mock and private runs see the same names.
Nothing is pickled: what travels is source text the owner approves.
"""

from __future__ import annotations

import builtins
import functools
import importlib.metadata
import io
import math
import symtable
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jupyter_syft.kernel.cells import CellError

MAX_INPUT_CHARS = 10_000  # the longest literal one kernel value may take in the request's code
# Builtins IPython adds, which a job's plain Python does not have.
IPYTHON_BUILTINS = frozenset({"display", "get_ipython", "__IPYTHON__"})
# Names a Python process has without importing anything.
DOMAIN_BUILTINS = frozenset(dir(builtins)) - IPYTHON_BUILTINS
NUMPY_KINDS = "biufcUS"  # bool, integer, unsigned, float, complex, str, bytes
TORCH_DTYPES = frozenset(
    ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32",
     "float64", "complex64", "complex128"]
)  # fmt: skip
VALUE_KINDS = (
    "numbers, strings, bools, None, and small lists, tuples, dicts, numpy arrays or torch "
    "tensors of them"
)


@dataclass(frozen=True)
class Input:
    """One free name of a cell and the line that gives it its kernel value in the function."""

    name: str
    line: str  # `threshold = 30`, `import numpy as np`, `from math import sqrt`
    needs: frozenset[str] = frozenset()  # modules the value's literal calls (numpy, torch)

    @property
    def is_import(self) -> bool:
        return self.line.startswith(("import ", "from "))


def free_names(function_source: str) -> list[str]:
    """The names the function (and anything nested in it) reads as globals, builtins left
    out: what the domain would look up and not find. The function's own scope comes first."""
    try:
        table = symtable.symtable(function_source, "<cell>", "exec")
    except SyntaxError as exc:  # `from x import *`, a stray `nonlocal`: counted as in the cell
        exc.lineno = (exc.lineno or 2) - 1  # the function's line 1 is its `def`
        raise
    [function] = table.get_children()
    found: dict[str, None] = {}

    def walk(scope: symtable.SymbolTable) -> None:
        for symbol in scope.get_symbols():
            made_here = symbol.is_declared_global() and symbol.is_assigned()
            if symbol.is_referenced() and symbol.is_global() and not made_here:
                found.setdefault(symbol.get_name())
        for child in scope.get_children():
            walk(child)

    walk(function)
    return [name for name in found if name not in DOMAIN_BUILTINS]


def capture(names: Iterable[str], namespace: dict[str, Any]) -> list[Input]:
    """The kernel's value of each name as a line of the function; a CellError naming every
    name that cannot go (one line each) if any cannot."""
    found, refused = [], []
    for name in names:
        try:
            found.append(_input(name, namespace))
        except _Refused as exc:
            refused.append(f"`{name}` {exc}")
    if refused:
        raise CellError("\n".join(refused))
    return found


def preamble(inputs: list[Input]) -> list[str]:
    """The function's first lines: imports (the helpers literals need included), then values,
    each marked as coming from the kernel."""
    helpers = sorted({f"import {module}" for i in inputs for module in i.needs})
    imports = [i.line for i in inputs if i.is_import]
    lines = [f"{line}  # from the scientist's kernel" for line in imports]
    lines += [f"{line}  # to rebuild a value below" for line in helpers if line not in imports]
    lines += [f"{i.line}  # from the scientist's kernel" for i in inputs if not i.is_import]
    return lines


class _Refused(Exception):
    """Why one name cannot go with the request (the text after the name)."""


def _input(name: str, namespace: dict[str, Any]) -> Input:
    if name in IPYTHON_BUILTINS and name not in namespace:
        raise _Refused(
            "is IPython's, which the domain's Python does not have: end the cell with the "
            "value to show instead (its last expression is its result)"
        )
    if name not in namespace:
        raise _Refused("is not defined, in the cell or in this kernel: define it in the cell")
    value = namespace[name]
    if isinstance(value, types.ModuleType):
        return Input(name, _import_module(name, value))
    if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType | types.MethodType):
        return Input(name, _import_object(name, value))
    if _is(value, "numpy", "ufunc"):  # np.sqrt and the like
        return Input(name, _import_object(name, value))
    if isinstance(value, io.IOBase):
        raise _Refused(
            "is an open file, which the domain cannot read: read it into a value first "
            "(text = f.read()) and use that"
        )
    writer = _Writer()
    writer.write(value)
    return Input(name, f"{name} = {''.join(writer.parts)}", frozenset(writer.modules))


def _import_module(name: str, module: types.ModuleType) -> str:
    real = module.__name__
    if not _installed(real):
        raise _Refused(
            f"is the module {real} from your own files, which the domain does not have: "
            "put what you need from it inside the cell"
        )
    if real == name:
        return f"import {real}"
    return f"import {real} as {name}"


def _import_object(name: str, value: Any) -> str:
    module = getattr(value, "__module__", None) or ""
    qualname = getattr(value, "__qualname__", getattr(value, "__name__", ""))
    what = "class" if isinstance(value, type) else "function"
    if module == "__main__" or not isinstance(module, str):
        raise _Refused(f"is a {what} defined in this kernel: define it inside the cell")
    found = getattr(sys.modules.get(module), qualname, None) if "." not in qualname else None
    if found is not value or not _installed(module):
        raise _Refused(
            f"is a {what} ({module}.{qualname}) the domain cannot import by name: "
            "define or import it inside the cell"
        )
    return f"from {module} import {qualname}" + ("" if qualname == name else f" as {name}")


@functools.cache
def _distributed_packages() -> frozenset[str]:
    """Top-level names of installed distributions (editable installs included)."""
    return frozenset(importlib.metadata.packages_distributions())


def _installed(module: str) -> bool:
    """Whether `module` is importable on any Python with the same packages: the standard
    library's or an installed distribution's, not a file next to the notebook."""
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or top in _distributed_packages()


class _Writer:
    """Source text of a value, written piece by piece so an oversize value stops early."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.modules: set[str] = set()  # of the calls written (numpy.array, torch.tensor)

    def write(self, value: Any) -> None:
        try:
            self.value(value)
        except RecursionError:
            raise _Refused("is nested too deeply to go with the request") from None

    def add(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_INPUT_CHARS:
            raise self.too_large()
        self.parts.append(text)

    @staticmethod
    def too_large() -> _Refused:
        return _Refused(
            f"is too large to go with the request (over {MAX_INPUT_CHARS:,} characters as "
            "code): compute it inside the cell"
        )

    def value(self, value: Any) -> None:
        kind = type(value)
        if value is None or kind in (bool, int, str, bytes):
            self.add(repr(value))
        elif kind is float:
            self.add(repr(value) if math.isfinite(value) else f"float({str(value)!r})")
        elif kind in (list, tuple):
            self.sequence(value)
        elif kind is dict:
            self.add("{")
            for i, (key, item) in enumerate(value.items()):
                self.add(", " if i else "")
                self.value(key)
                self.add(": ")
                self.value(item)
            self.add("}")
        elif _is(value, "numpy", "generic") and value.dtype.kind in NUMPY_KINDS:
            self.modules.add("numpy")
            self.add(f"numpy.{type(value).__name__}(")
            self.value(value.item())
            self.add(")")
        elif _is(value, "numpy", "ndarray") and value.dtype.kind in NUMPY_KINDS:
            dtype = value.dtype.str if value.dtype.kind in "US" else value.dtype.name
            self.array("numpy.array", repr(dtype), value, value.shape)
        elif _is(value, "torch", "Tensor") and str(value.dtype)[6:] in TORCH_DTYPES:
            self.array("torch.tensor", str(value.dtype), value.detach().cpu(), tuple(value.shape))
        else:
            raise _Refused(
                f"is a {_type_name(value)}: only {VALUE_KINDS} go with a request; "
                "compute it inside the cell"
            )

    def sequence(self, value: list | tuple) -> None:
        self.add("[" if isinstance(value, list) else "(")
        for i, item in enumerate(value):
            self.add(", " if i else "")
            self.value(item)
        self.add("]" if isinstance(value, list) else ",)" if len(value) == 1 else ")")

    def array(self, make: str, dtype: str, value: Any, shape: tuple[int, ...]) -> None:
        """`numpy.array([[1, 2]], dtype='int64')`; an empty array keeps its shape by reshape."""
        if 2 * math.prod(shape) > MAX_INPUT_CHARS:  # each element takes two characters or more
            raise self.too_large()
        self.modules.add(make.partition(".")[0])
        self.add(f"{make}(")
        self.value(value.tolist())
        self.add(f", dtype={dtype})")
        if 0 in shape and len(shape) > 1:
            self.add(f".reshape{tuple(shape)}")


def _is(value: Any, library: str, kind: str) -> bool:
    module = sys.modules.get(library)
    return module is not None and isinstance(value, getattr(module, kind))


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__.partition(".")[0]
    return kind.__qualname__ if module == "builtins" else f"{module} {kind.__qualname__}"
