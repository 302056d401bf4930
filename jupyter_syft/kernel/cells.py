"""What a `%%mock` / `%%request` cell says: its data sources, its options, and its code.

The magic line names the data (`DOMAIN/DATASET as NAME, ...`); the cell body is plain Python
whose last expression is its value. For a request the body becomes the source text of one
function taking the NAMEs, so the owner reviews the scientist's own lines, comments and all.
"""

from __future__ import annotations

import ast
import io
import keyword
import math
import re
import shlex
import tokenize
from dataclasses import dataclass

ALL_DOMAINS = "*"
FUNCTION_NAME = "notebook_cell"
_SOURCE = re.compile(r"^\s*(?P<domain>[^\s/]+)/(?P<dataset>[^\s/]+)\s+as\s+(?P<name>\S+)\s*$")
_USAGE = (
    "DOMAIN/DATASET as NAME[, DOMAIN/DATASET as NAME ...] [--out VAR] [--timeout S] "
    '[--dp-epsilon E] [--aggregate sum|mean] [--requirements "PACKAGE==VERSION ..."]'
)
AGGREGATE_OPS = ("sum", "mean")


class CellError(ValueError):
    """The magic line or the cell cannot be used as written; the message says why."""


@dataclass(frozen=True)
class Source:
    """One dataset the cell reads: `domain` is a domain name or `*` (every domain holding it)."""

    domain: str
    dataset: str
    name: str

    def __str__(self) -> str:
        return f"{self.domain}/{self.dataset}"


@dataclass(frozen=True)
class CellLine:
    sources: tuple[Source, ...]
    out: str = "_request"
    timeout: float | None = None
    dp_epsilon: float | None = None  # the cell is a DP query paying this epsilon
    aggregate: str | None = None  # "sum" / "mean": securely aggregated across domains
    requirements: tuple[str, ...] = ()  # packages the request's job needs beyond the domain's

    @property
    def every_domain(self) -> bool:
        return self.sources[0].domain == ALL_DOMAINS


def parse_line(line: str) -> CellLine:
    """Parse `%%mock` / `%%request` arguments (both take the same line, so a cell can switch
    between them by its first word alone; `%%mock` runs with this kernel's packages)."""
    try:
        words = shlex.split(line)  # --requirements "a==1 b" is one value
    except ValueError as exc:
        raise CellError(f"cannot read the line: {exc}") from None
    first_option = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    sources = tuple(_parse_source(part) for part in " ".join(words[:first_option]).split(","))
    options = parse_options(words[first_option:])
    names = [s.name for s in sources]
    if options.get("aggregate") is not None:
        return _aggregate_line(sources, options)
    if len(set(names)) != len(names):
        raise CellError(f"each dataset needs its own NAME; got {', '.join(names)}")
    if len({s.domain == ALL_DOMAINS for s in sources}) > 1:
        raise CellError(
            "either every dataset names its domain or every one uses `*`, not a mix: "
            f"{', '.join(map(str, sources))}"
        )
    one = len(sources) == 1 and sources[0].domain != ALL_DOMAINS
    if options.get("dp_epsilon") is not None and options.get("requirements"):
        raise CellError("--requirements is for code: a DP query runs the domain's own")
    if options.get("dp_epsilon") is not None and not one:
        raise CellError("--dp-epsilon takes one dataset on a named domain: DOMAIN/DATASET as NAME")
    return CellLine(sources, **options)


def _aggregate_line(sources: tuple[Source, ...], options: dict) -> CellLine:
    """`*/DATASET as NAME`, or `D1/DATASET as NAME, D2/DATASET as NAME, ...`: one dataset and
    one NAME, on several domains."""
    if options.get("dp_epsilon") is not None:
        raise CellError("--aggregate and --dp-epsilon cannot be combined")
    if options.get("requirements"):
        raise CellError("--aggregate runs with the domains' own packages: no --requirements")
    usage = "--aggregate takes */DATASET as NAME, or DOMAIN/DATASET as NAME on several domains"
    if len({(s.dataset, s.name) for s in sources}) != 1:
        raise CellError(f"{usage}: one dataset and one NAME")
    domains = [s.domain for s in sources]
    several = ALL_DOMAINS not in domains and len(set(domains)) == len(domains) > 1
    if domains != [ALL_DOMAINS] and not several:
        raise CellError(f"{usage} (each domain once, at least 3 for secure aggregation)")
    return CellLine(sources, **options)


def _parse_source(text: str) -> Source:
    match = _SOURCE.match(text)
    if not text.strip():
        raise CellError(f"expected {_USAGE}")
    if match is None:
        raise CellError(f"cannot read {text.strip()!r}: expected DOMAIN/DATASET as NAME")
    name = match["name"]
    if not name.isidentifier() or keyword.iskeyword(name):
        raise CellError(f"{name!r} is not a valid Python name for the dataset")
    return Source(match["domain"], match["dataset"], name)


def parse_options(words: list[str]) -> dict:
    """`--out VAR`, `--timeout S`, `--dp-epsilon E`, `--aggregate OP` and `--requirements
    "A==1 B"` (space-separated), as keyword arguments of CellLine."""
    options: dict = {}
    pairs = iter(words)
    for option in pairs:
        value = next(pairs, None)
        if value is None:
            raise CellError(f"{option} needs a value")
        if option == "--out":
            if not value.isidentifier() or keyword.iskeyword(value):
                raise CellError(f"--out {value}: not a valid Python name")
            options["out"] = value
        elif option == "--timeout":
            try:
                options["timeout"] = float(value)
            except ValueError:
                raise CellError(f"--timeout {value}: not a number of seconds") from None
            if not options["timeout"] > 0:
                raise CellError(f"--timeout {value}: must be more than 0 seconds")
        elif option == "--dp-epsilon":
            try:
                options["dp_epsilon"] = float(value)
            except ValueError:
                raise CellError(f"--dp-epsilon {value}: not a number") from None
            if not (math.isfinite(options["dp_epsilon"]) and options["dp_epsilon"] > 0):
                raise CellError(f"--dp-epsilon {value}: must be a finite number above 0")
        elif option == "--aggregate":
            if value not in AGGREGATE_OPS:
                raise CellError(f"--aggregate {value}: expected sum or mean")
            options["aggregate"] = value
        elif option == "--requirements":
            if not value.split():
                raise CellError('--requirements needs packages, e.g. --requirements "humanize"')
            options["requirements"] = tuple(value.split())
        else:
            raise CellError(f"unknown option {option}; expected {_USAGE}")
    return options


def split_last_expression(tree: ast.Module) -> tuple[ast.Module, ast.Expression | None]:
    """The cell's statements, and its last expression (if it ends with one) to evaluate apart."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        body = ast.Module(body=tree.body[:-1], type_ignores=[])
        return body, ast.Expression(body=last.value)
    return tree, None


def cell_to_function(cell: str, params: list[str]) -> str:
    """Source text of `def notebook_cell(*params)` running `cell` and returning its last
    expression. Raises SyntaxError for a cell that is not valid Python.

    The cell's own text is kept (indented; continuation lines of multi-line strings are left
    alone, as indenting them would change the strings), so the reviewer reads what was written.
    """
    tree = ast.parse(cell, "<cell>")
    lines = cell.splitlines(keepends=True) or ["pass\n"]
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        row, col = last.lineno - 1, last.col_offset
        lines[row] = f"{lines[row][:col]}return {lines[row][col:]}"
    keep = _lines_inside_strings(cell)
    indented = [
        line if i in keep or not line.strip() else "    " + line for i, line in enumerate(lines)
    ]
    if not indented[-1].endswith("\n"):
        indented[-1] += "\n"
    if not tree.body:
        indented.append("    pass\n")
    return f"def {FUNCTION_NAME}({', '.join(params)}):\n{''.join(indented)}"


def _lines_inside_strings(cell: str) -> set[int]:
    """0-based numbers of lines that begin inside a token started on an earlier line (the
    body of a multi-line string)."""
    inside: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(cell).readline):
        start, end = token.start[0], token.end[0]
        if end > start and token.type not in (tokenize.NL, tokenize.NEWLINE):
            inside.update(range(start, end))  # 1-based start..end-1 == 0-based start+1..end
    return inside
