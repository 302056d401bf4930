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
from collections.abc import Sequence
from dataclasses import dataclass

from jupyter_syft.wire.resources import ResourceError, resources_from

ALL_DOMAINS = "*"
FUNCTION_NAME = "notebook_cell"  # a cell with nothing to name it by
MAX_NAME_CHARS = 40  # a name taken from the cell's first line is cut at a word to this length
_SOURCE = re.compile(r"^\s*(?P<domain>[^\s/]+)/(?P<dataset>[^\s/]+)\s+as\s+(?P<name>\S+)\s*$")
_USAGE = (
    "DOMAIN/DATASET as NAME[, DOMAIN/DATASET as NAME ...] [--out VAR] [--name NAME] "
    '[--timeout S] [--dp-epsilon E] [--aggregate sum|mean] [--requirements "PACKAGE==VERSION ..."]'
    " [--cpus N] [--gpus N] [--memory-mb MB] [--distributed]"
)
# What a request's job asks the executor for: option -> (Resources field, its number type).
RESOURCE_OPTIONS = {
    "--cpus": ("cpus", float),
    "--gpus": ("gpus", int),
    "--memory-mb": ("memory_mb", int),
}
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
    name: str | None = None  # what the owner sees the request as; else from the cell's first line
    timeout: float | None = None
    dp_epsilon: float | None = None  # the cell is a DP query paying this epsilon
    aggregate: str | None = None  # "sum" / "mean": securely aggregated across domains
    requirements: tuple[str, ...] = ()  # packages the request's job needs beyond the domain's
    resources: tuple[tuple[str, float], ...] = ()  # (field, value) the job asks for, as given
    distributed: bool = False  # every dataset as a ray.data Dataset (its mock: a local one)

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
    if options.get("dp_epsilon") is not None and options.get("resources"):
        raise CellError(
            "--cpus, --gpus and --memory-mb are for code: a DP query runs the domain's own"
        )
    if options.get("dp_epsilon") is not None and options.get("distributed"):
        raise CellError("--distributed is for code: a DP query runs the domain's own")
    if options.get("dp_epsilon") is not None and options.get("name"):
        raise CellError("--name names the code a request sends: a DP query sends none")
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
    if options.get("resources"):
        raise CellError(
            "--aggregate runs with the domains' defaults: no --cpus, --gpus, --memory-mb"
        )
    if options.get("distributed"):
        raise CellError("--aggregate takes each domain's dataset as a table: no --distributed")
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
    """`--out VAR`, `--name NAME`, `--timeout S`, `--dp-epsilon E`, `--aggregate OP`,
    `--requirements "A==1 B"` (space-separated), `--cpus N --gpus N --memory-mb MB` and the
    flag `--distributed`, as keyword arguments of CellLine."""
    options: dict = {}
    pairs = iter(words)
    for option in pairs:
        if option == "--distributed":  # a flag: takes no value
            options["distributed"] = True
            continue
        value = next(pairs, None)
        if value is None:
            raise CellError(f"{option} needs a value")
        if option == "--out":
            if not value.isidentifier() or keyword.iskeyword(value):
                raise CellError(f"--out {value}: not a valid Python name")
            options["out"] = value
        elif option == "--name":
            if not value.isidentifier() or keyword.iskeyword(value):
                raise CellError(f"--name {value}: not a valid Python name (e.g. corr_bmi_age)")
            options["name"] = value
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
        elif option in RESOURCE_OPTIONS:
            field, number = RESOURCE_OPTIONS[option]
            try:
                asked = number(value)
            except ValueError:
                kind = "a number" if number is float else "a whole number"
                raise CellError(f"{option} {value}: not {kind}") from None
            try:
                resources_from({field: asked})
            except ResourceError as exc:
                raise CellError(f"{option} {value}: {exc}") from None
            options["resources"] = (*options.get("resources", ()), (field, asked))
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


def cell_to_function(
    cell: str, params: list[str], name: str = FUNCTION_NAME, preamble: Sequence[str] = ()
) -> str:
    """Source text of `def name(*params)` running `cell` after the `preamble` lines (the
    kernel values and imports the cell uses, jupyter_syft.kernel.inputs) and returning its
    last expression. Raises SyntaxError for a cell that is not valid Python.

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
    first = "".join(f"    {line}\n" for line in preamble)
    return f"def {name}({', '.join(params)}):\n{first}{''.join(indented)}"


def request_name(cell: str) -> str:
    """What to call a cell's request when the line gives no `--name`: its first meaningful
    line as an identifier-like name (imports are not meaningful): the words of a comment
    before it, else the target of an assignment, a docstring's words, or the statement's
    words (`df_bmi_describe`)."""
    try:
        tree = ast.parse(cell)
    except SyntaxError:
        return FUNCTION_NAME
    statements = [s for s in tree.body if not isinstance(s, ast.Import | ast.ImportFrom)]
    before = statements[0].lineno - 1 if statements else None
    for line in cell.splitlines()[:before]:
        if line.strip().startswith("#") and _name_from(line):
            return _name_from(line)
    if not statements:
        return FUNCTION_NAME
    first = statements[0]
    targets = first.targets if isinstance(first, ast.Assign) else [getattr(first, "target", None)]
    if len(targets) == 1 and isinstance(targets[0], ast.Name):
        return _name_from(targets[0].id) or FUNCTION_NAME
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return _name_from(str(first.value.value)) or FUNCTION_NAME
    return _name_from(ast.get_source_segment(cell, first) or "") or FUNCTION_NAME


def _name_from(text: str) -> str:
    """Words of `text` joined by `_`, lower case, cut at a word to MAX_NAME_CHARS ("" if it
    has no words); a name Python accepts for a function."""
    name = ""
    for word in re.findall(r"[^\W_]+", text.lower()):
        if len(name) + len(word) + 1 > MAX_NAME_CHARS and name:
            break
        name = f"{name}_{word}" if name else word[:MAX_NAME_CHARS]
    if name and not name.isidentifier():  # starts with a digit
        name = f"cell_{name}"[:MAX_NAME_CHARS]
    if keyword.iskeyword(name):
        return f"{name}_cell"
    return name if name.isidentifier() else ""


def _lines_inside_strings(cell: str) -> set[int]:
    """0-based numbers of lines that begin inside a token started on an earlier line (the
    body of a multi-line string)."""
    inside: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(cell).readline):
        start, end = token.start[0], token.end[0]
        if end > start and token.type not in (tokenize.NL, tokenize.NEWLINE):
            inside.update(range(start, end))  # 1-based start..end-1 == 0-based start+1..end
    return inside
