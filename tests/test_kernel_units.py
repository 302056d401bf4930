"""The kernel's pure parts: the magic line, cell-to-function, rendering, completion."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
import torch

from jupyter_syft import safe_html
from jupyter_syft.kernel import display
from jupyter_syft.kernel.cells import (
    FUNCTION_NAME,
    CellError,
    Source,
    cell_to_function,
    parse_line,
)
from jupyter_syft.kernel.completion import complete
from jupyter_syft.kernel.dp import check_cell

pytestmark = pytest.mark.unit


def run(code: str, **inputs: object) -> object:
    namespace: dict = {}
    exec(compile(code, "<test>", "exec"), namespace)
    return namespace[FUNCTION_NAME](**inputs)


def test_parse_line() -> None:
    line = parse_line("hospital-a/diabetes as df, hospital-a/scans as s --out r --timeout 2.5")
    assert line.sources == (
        Source("hospital-a", "diabetes", "df"),
        Source("hospital-a", "scans", "s"),
    )
    assert (line.out, line.timeout, line.every_domain) == ("r", 2.5, False)
    defaults = parse_line("*/diabetes as df")
    assert (defaults.out, defaults.timeout, defaults.every_domain) == ("_request", None, True)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "expected DOMAIN/DATASET as NAME"),
        ("diabetes as df", "cannot read 'diabetes as df'"),
        ("a/b as class", "not a valid Python name"),
        ("a/b as x, a/c as x", "each dataset needs its own NAME"),
        ("*/b as x, a/c as y", "not a mix"),
        ("a/b as x --timeout soon", "not a number"),
        ("a/b as x --timeout 0", "more than 0"),
        ("a/b as x --out 2x", "not a valid Python name"),
        ("a/b as x --dp-epsilon lots", "not a number"),
        ("a/b as x --dp-epsilon inf", "finite number above 0"),
        ("a/b as x --dp-epsilon 0", "finite number above 0"),
        ("*/b as x --dp-epsilon 1", "one dataset on a named domain"),
        ("a/b as x, a/c as y --dp-epsilon 1", "one dataset on a named domain"),
    ],
)
def test_parse_line_refuses(line: str, message: str) -> None:
    with pytest.raises(CellError, match=message):
        parse_line(line)


def test_dp_line_and_cell() -> None:
    assert parse_line("a/b as df --dp-epsilon 0.25").dp_epsilon == 0.25
    assert parse_line("a/b as df").dp_epsilon is None
    check_cell(ast.parse('low = 15\ndf.mean("bmi", bounds=(low, 50), epsilon=0.1)'), "df")
    for cell in ["df.head()", "df.count()\n1", "a = df.count()\ndf.count()", "", "x.count()"]:
        with pytest.raises(CellError, match="ends with one DP query on df"):
            check_cell(ast.parse(cell), "df")


def test_aggregate_line() -> None:
    assert parse_line("*/diabetes as df --aggregate mean").aggregate == "mean"
    several = parse_line("a/d as df, b/d as df, c/d as df --aggregate sum")
    assert [s.domain for s in several.sources] == ["a", "b", "c"]
    for line, message in [
        ("*/d as df --aggregate max", "expected sum or mean"),
        ("a/d as df --aggregate sum", "on several domains"),
        ("a/d as df, b/e as df --aggregate sum", "one dataset and one NAME"),
        ("a/d as df, a/d as df --aggregate sum", "each domain once"),
        ("*/d as df --aggregate sum --dp-epsilon 1", "cannot be combined"),
    ]:
        with pytest.raises(CellError, match=message):
            parse_line(line)


def test_budget_gauge_text() -> None:
    assert display.gauge(0.5, 1.5)[1] == "\u2588" * 5 + "\u2591" * 15
    assert display.gauge(0.0, 0.0)[1] == "\u2588" * 20  # nothing granted: nothing to spend
    assert "no privacy budget granted" in display.budgets([], ["x"])["text/plain"]


def test_cell_becomes_a_function_returning_its_last_expression() -> None:
    cell = "# mean BMI\nm = df['bmi'].mean()\n\nm * 2  # doubled\n"
    code = cell_to_function(cell, ["df"])
    assert code.startswith(f"def {FUNCTION_NAME}(df):\n    # mean BMI\n")
    assert "    return m * 2  # doubled\n" in code
    assert run(code, df=pd.DataFrame({"bmi": [1.0, 3.0]})) == 4.0


def test_cell_text_survives_the_transform() -> None:
    cell = 'text = """first\n  second\nthird"""\nif True:\n\tn = 1; n\ntext'
    assert run(cell_to_function(cell, [])) == "first\n  second\nthird"
    assert run(cell_to_function("x = 1; x + 1", [])) == 2
    assert run(cell_to_function("values = [\n    1,\n    2,\n]\nsum(\n    values\n)", [])) == 3
    assert run(cell_to_function("y = 5", [])) is None
    assert run(cell_to_function("", [])) is None
    assert run(cell_to_function("# only a comment", [])) is None


def test_syntax_errors_are_caught_before_sending() -> None:
    with pytest.raises(SyntaxError):
        cell_to_function("x = (1,\n", ["df"])


def test_rendering_escapes_and_sanitises() -> None:
    frame = pd.DataFrame({"note": ["<script>alert(1)</script>", "<b onclick=x>hi</b>"]})
    markup, text = safe_html.render(frame)
    clean = safe_html.sanitise(markup)
    assert "<script" not in clean and "<b " not in clean and "&lt;script&gt;" in clean
    assert "2 rows x 1 columns" in text
    assert safe_html.sanitise('<a href="javascript:x">l</a><img src=x onerror=y>') == "l"
    styled = safe_html.sanitise('<div style="color: red; position: fixed">x</div>')
    assert styled == '<div style="color:red">x</div>'


def test_rendering_tensors_arrays_and_containers() -> None:
    assert "torch tensor, shape (2, 3), dtype float32" in safe_html.render(torch.zeros(2, 3))[1]
    assert "numpy array, shape (4,), dtype int64" in safe_html.render(np.arange(4))[1]
    assert safe_html.render(np.float64(2.5))[1] == "2.5 (numpy float64)"
    assert safe_html.render({"n": 3, "m": 1.5})[1] == "{'n': 3, 'm': 1.5}"
    nested, _ = safe_html.render({"t": torch.ones(1)})
    assert "<table>" in nested and "torch tensor" in nested


def test_completion_of_syft_syntax() -> None:
    catalog = {"a": ["diabetes", "scans"], "b": ["diabetes"]}

    def matches(code: str) -> list[str] | None:
        reply = complete(code, len(code), catalog)
        return None if reply is None else reply["matches"]

    assert matches("%%mock ") == ["a/", "b/", "*/"]
    assert matches("%%request b/") == ["b/diabetes"]
    assert matches("%%request */") == ["*/diabetes", "*/scans"]
    assert matches("%%request a/scans as s, a/d") == ["a/diabetes"]
    assert matches("%%request a/scans as ") is None  # a name of yours: IPython's business
    assert matches("%%request a/scans as s --o") is None
    commands = ["budget", "connect", "domains", "fetch", "requests", "search", "wait", "whoami"]
    assert matches("%syft ") == commands
    assert matches("%syft connect d") == ["demo"]
    assert matches("print(1)\n%%mock a/") is None  # a cell magic only on a cell's first line
    assert matches("x = 1") is None
