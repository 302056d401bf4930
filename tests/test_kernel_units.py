"""The kernel's pure parts: the magic line, cell-to-function, rendering, completion."""

from __future__ import annotations

import ast
import html
import keyword

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jupyter_syft import safe_html
from jupyter_syft.client.mocks import labelled_mock, plain_mock
from jupyter_syft.client.privacy import DPResult, shown_answer
from jupyter_syft.kernel import cells, display, inputs
from jupyter_syft.kernel.cells import (
    FUNCTION_NAME,
    CellError,
    Source,
    cell_to_function,
    parse_line,
    request_name,
)
from jupyter_syft.kernel.completion import complete
from jupyter_syft.kernel.dp import check_cell
from jupyter_syft.wire import messages as m

pytestmark = pytest.mark.unit


def run(code: str, name: str = FUNCTION_NAME, **datasets: object) -> object:
    namespace: dict = {}
    exec(compile(code, "<test>", "exec"), namespace)
    return namespace[name](**datasets)


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
    shown = display.budgets([], "not reached: x: offline")["text/plain"]
    assert "no privacy budget granted" in shown and "not reached: x" in shown


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
    commands = ["budget", "connect", "domains", "fetch", "help", "requests", "search", "wait"]
    commands.append("whoami")
    assert matches("%syft ") == commands
    assert matches("%syft connect d") == ["demo"]
    assert matches("print(1)\n%%mock a/") is None  # a cell magic only on a cell's first line
    assert matches("x = 1") is None


# ---- what a cell takes from the kernel, and its name ---------------------------------------


def helper_defined_here(x: float) -> float:
    return x


def taken(cell: str, namespace: dict, params: tuple[str, ...] = ("df",)) -> list[str]:
    """The lines the cell's free names become (raises CellError as the magics would)."""
    bare = cell_to_function(cell, list(params))
    return [i.line for i in inputs.capture(inputs.free_names(bare), namespace)]


def test_free_names_are_the_globals_the_domain_would_look_up() -> None:
    cell = (
        "import math\n"
        "y = [threshold * i for i in range(n)]\n"
        "class Box:\n    size = width\n"
        "f = lambda q: q + offset\n"
        "def g(v):\n    return v * scale\n"
        "math.sqrt(len(df)) + f(1) + g(2) + y[0] + Box.size"
    )
    names = inputs.free_names(cell_to_function(cell, ["df"]))
    assert sorted(names) == ["n", "offset", "scale", "threshold", "width"]  # not df, math, len
    made = "global counter\ncounter = 1\ncounter + step"
    assert inputs.free_names(cell_to_function(made, [])) == ["step"]
    with pytest.raises(SyntaxError) as star:
        inputs.free_names(cell_to_function("x = 1\nfrom math import *", []))
    assert star.value.lineno == 2  # the cell's own line number


def test_values_travel_as_literals_the_owner_reads() -> None:
    namespace = {
        "threshold": 30, "name": "a'b\n", "flag": None, "cut": 2.5, "nan": float("nan"),
        "pairs": {"a": (1,), 2: [True, b"x"]}, "w": np.array([[1.5, 2.0]]),
        "t": torch.ones(2, dtype=torch.int64), "m": np.float64(26.25),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }  # fmt: skip
    cell = "threshold, name, flag, cut, nan, pairs, w, t, m, empty"
    lines = taken(cell, namespace)
    assert lines[0] == "threshold = 30"
    assert "w = numpy.array([[1.5, 2.0]], dtype='float64')" in lines
    assert "t = torch.tensor([1, 1], dtype=torch.int64)" in lines
    code = cell_to_function(cell, ["df"], "check", inputs.preamble(inputs.capture(
        inputs.free_names(cell_to_function(cell, ["df"])), namespace)))  # fmt: skip
    assert code.splitlines()[1:3] == [
        "    import numpy  # to rebuild a value below",
        "    import torch  # to rebuild a value below",
    ]
    got = dict(zip(cell.split(", "), run(code, "check", df=None), strict=True))
    for key, value in namespace.items():
        if isinstance(value, float) and value != value:
            assert got[key] != got[key]
        elif isinstance(value, np.ndarray | torch.Tensor):
            assert type(got[key]) is type(value) and got[key].dtype == value.dtype
            assert tuple(got[key].shape) == tuple(value.shape) and (got[key] == value).all()
        else:
            assert got[key] == value and type(got[key]) is type(value)


def test_modules_and_installed_functions_are_imported_again() -> None:
    from math import sqrt

    namespace = {"np": np, "pd": pd, "math": __import__("math"), "sqrt": sqrt, "sq": np.sqrt}
    assert taken("np.mean(df) + pd.isna(1) + math.pi + sqrt(4) + sq(9)", namespace) == [
        "import numpy as np", "import pandas as pd", "import math", "from math import sqrt",
        "from numpy import sqrt as sq",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("helper(df)", "`helper` is a function defined in this kernel: define it inside the cell"),
        ("Box()", "`Box` is a class defined in this kernel: define it inside the cell"),
        ("f.read()", "`f` is an open file, which the domain cannot read"),
        ("big.sum()", "`big` is too large to go with the request (over 10,000 characters"),
        ("frame", "`frame` is a pandas DataFrame: only numbers, strings"),
        ("nope + 1", "`nope` is not defined, in the cell or in this kernel"),
        ("display(df)", "`display` is IPython's, which the domain's Python does not have"),
        ("mine.x", "`mine` is the module tests_local_module from your own files"),
        ("loop", "`loop` is nested too deeply"),
        ("helper(Box)", "`helper` is a function defined in this kernel: define it inside the cell"
         "\n`Box` is a class"),
    ],
)  # fmt: skip
def test_what_cannot_travel_is_refused_with_one_line_each(cell: str, message: str) -> None:
    import io
    import types

    class Box:
        pass

    Box.__module__ = "__main__"  # as if defined in the kernel
    helper = types.FunctionType(helper_defined_here.__code__, {})
    helper.__module__ = "__main__"
    mine = types.ModuleType("tests_local_module")
    loop: list = []
    loop.append(loop)
    namespace = {
        "helper": helper, "Box": Box, "f": io.StringIO(), "big": np.zeros(10_000),
        "frame": pd.DataFrame({"a": [1]}), "mine": mine, "loop": loop,
    }  # fmt: skip
    with pytest.raises(CellError) as refused:
        taken(cell, namespace)
    assert str(refused.value).startswith(message)
    assert str(refused.value).count("\n") == message.count("\n")  # one line per name


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.integers() | st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
))  # fmt: skip
def test_a_literal_rebuilds_its_value(value: object) -> None:
    [line] = inputs.preamble(inputs.capture(["v"], {"v": value}))
    namespace: dict = {}
    exec(line, namespace)
    assert namespace["v"] == value


@given(st.text())
def test_a_name_from_any_first_line_is_a_python_name(first_line: str) -> None:
    name = request_name(first_line + "\n1")
    assert name.isidentifier() and not keyword.iskeyword(name)
    assert len(name) <= cells.MAX_NAME_CHARS


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        ("corr_bmi_progression = df['bmi'].corr(df['progression'])", "corr_bmi_progression"),
        ("\n# correlation of bmi and progression\nc = 1", "correlation_of_bmi_and_progression"),
        ("(df['bmi'] > threshold).sum()", "df_bmi_threshold_sum"),
        ('"""Mean BMI by age."""\n1', "mean_bmi_by_age"),
        ("#\n# 3 groups\nx", "cell_3_groups"),
        ("pass", "pass_cell"),
        ("import numpy as np\n\n# summary per hospital\n{'n': len(df)}", "summary_per_hospital"),
        ("import numpy as np\nnp.mean(df.bmi)", "np_mean_df_bmi"),
        ("import numpy as np", FUNCTION_NAME),
        ("", FUNCTION_NAME),
        ("# " + "word " * 20, "word_" * 7 + "word"),
    ],
)
def test_a_request_is_named_by_its_first_meaningful_line(cell: str, name: str) -> None:
    assert request_name(cell) == name


def test_name_option() -> None:
    assert parse_line("a/b as df --name corr_bmi").name == "corr_bmi"
    assert parse_line("a/b as df").name is None
    for line, message in [
        ("a/b as df --name 2x", "--name 2x: not a valid Python name"),
        ("a/b as df --name class", "not a valid Python name"),
        ("a/b as df --name q --dp-epsilon 1", "a DP query sends none"),
    ]:
        with pytest.raises(CellError, match=message):
            parse_line(line)


# ---- DP answers to their accuracy, mocks labelled -----------------------------------------


@pytest.mark.parametrize(
    ("value", "accuracy", "shown"),
    [
        (33.251235377297554, 7.0912, "33.25 ± 7.09"),
        (120, 3.9163, "120 ± 3.92"),
        (0.123456, 0.0123, "0.1235 ± 0.0123"),
        (1234.5678, 123.4, "1235 ± 123"),
        ({"F": 12.345, "M": 3.0}, 1.23, "{'F': 12.35, 'M': 3.00} (each ± 1.23)"),
        ([26.734512, np.float64(150.3333)], None, "[26.73, 150.3]"),
        (26.734512, None, "26.73"),
    ],
)
def test_dp_answers_are_shown_to_their_accuracy(value: object, accuracy: float, shown: str) -> None:
    assert shown_answer(value, accuracy) == shown
    query = m.DPQuery("mean", 0.1, "bmi", (15.0, 50.0))
    result = DPResult("diabetes", query, value, accuracy, 0.1, 0.4, 0.0)
    assert f"mean(bmi) = {shown}  [" in repr(result)
    assert html.escape(shown) in result._repr_html_()
    assert result.value is value  # every digit stays for code


def test_mocks_say_mock_in_every_display_and_behave_as_their_kind() -> None:
    frame = labelled_mock(pd.DataFrame({"bmi": [20.0, 30.0]}), "diabetes")
    assert isinstance(frame, pd.DataFrame) and float(frame["bmi"].mean()) == 25.0
    assert repr(frame).startswith("[MOCK data, not the private data: the mock of 'diabetes']")
    assert ">MOCK</span>" in frame._repr_html_() and "<table" in frame._repr_html_()
    assert "MOCK" in repr(frame[frame.bmi > 25]) and "MOCK" in repr(frame["bmi"])
    assert type(plain_mock(frame)) is pd.DataFrame
    tensor = labelled_mock(torch.zeros(2, 2), "scans")
    assert "MOCK" in repr(tensor) and ">MOCK</span>" in tensor._repr_html_()
    assert type(tensor * 2) is torch.Tensor and type(plain_mock(tensor)) is torch.Tensor
    array = labelled_mock(np.arange(3.0), "counts")
    assert "MOCK" in repr(array) and type(array.sum()) is np.float64


def test_a_status_beside_its_badge_does_not_repeat_it() -> None:
    from jupyter_syft.words import REQUEST_STATUS, after_badge

    assert after_badge("pending") == "waiting for the owner's review"
    for status in REQUEST_STATUS:
        assert not after_badge(status).startswith(f"{status}:"), status
