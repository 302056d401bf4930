"""Mocks that say so: `dataset.mock` is a DataFrame, numpy array or torch tensor that behaves
as one in code, and whose every display (text and HTML) carries a MOCK banner, so a mock
printed or shown anywhere cannot pass for the private data.

Selections and most operations on a pandas or numpy mock stay labelled (the libraries carry
the subclass through; a few pandas methods, such as `describe`, build plain frames); results
of torch operations are plain tensors.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from jupyter_syft.safe_html import COLOURS, badge, esc


def banner(dataset: str) -> str:
    return f"MOCK data, not the private data: the mock of {dataset!r}"


def banner_html(dataset: str) -> str:
    text = f"mock data, not the private data: the mock of {dataset!r}"
    return f"<div>{badge(COLOURS['mock'], 'MOCK')} {esc(text)}</div>"


def labelled_mock(data: Any, dataset: str) -> Any:
    """`data` (a dataset's mock as decoded) as its labelled kind, sharing its memory."""
    if _is(data, "pandas", "DataFrame"):
        return _named(_pandas_kinds()[0](data), dataset)
    if _is(data, "numpy", "ndarray"):
        return _named(data.view(_numpy_kind()), dataset)
    if _is(data, "torch", "Tensor"):
        return _named(data.as_subclass(_torch_kind()), dataset)
    return data


def plain_mock(data: Any) -> Any:
    """A labelled mock as its library's own type (what a request's function gets on the
    domain), sharing its memory; anything else as it is."""
    if type(data).__module__ != __name__:
        return data
    if _is(data, "pandas", "DataFrame"):
        import pandas as pd

        return pd.DataFrame(data, copy=False)
    if _is(data, "numpy", "ndarray"):
        import numpy as np

        return data.view(np.ndarray)
    import torch

    return data.as_subclass(torch.Tensor)


def _named(data: Any, dataset: str) -> Any:
    data.mock_of = dataset
    return data


def _is(value: Any, library: str, kind: str) -> bool:
    module = sys.modules.get(library)
    return module is not None and isinstance(value, getattr(module, kind))


_kinds: dict[str, Any] = {}


def _pandas_kinds() -> tuple[type, type]:
    """MockFrame and MockSeries, made on first use (pandas is imported only then)."""
    if "pandas" not in _kinds:
        import pandas as pd

        class MockFrame(pd.DataFrame):
            """A DataFrame of mock data: displays say MOCK; frames made from it too."""

            _metadata: ClassVar[list[str]] = ["mock_of"]
            mock_of = "a dataset"

            @property
            def _constructor(self) -> type:
                return MockFrame

            @property
            def _constructor_sliced(self) -> type:
                return MockSeries

            def __repr__(self) -> str:
                return f"[{banner(self.mock_of)}]\n{pd.DataFrame.__repr__(self)}"

            def _repr_html_(self) -> str | None:
                table = pd.DataFrame._repr_html_(self)
                return None if table is None else banner_html(self.mock_of) + table

        class MockSeries(pd.Series):
            """A Series of mock data (a column of a mock)."""

            _metadata: ClassVar[list[str]] = ["mock_of"]
            mock_of = "a dataset"

            @property
            def _constructor(self) -> type:
                return MockSeries

            @property
            def _constructor_expanddim(self) -> type:
                return MockFrame

            def __repr__(self) -> str:
                return f"[{banner(self.mock_of)}]\n{pd.Series.__repr__(self)}"

        _kinds["pandas"] = (MockFrame, MockSeries)
    return _kinds["pandas"]


def _numpy_kind() -> type:
    if "numpy" not in _kinds:
        import numpy as np

        class MockArray(np.ndarray):
            """A numpy array of mock data: displays say MOCK."""

            mock_of = "a dataset"

            def __array_finalize__(self, source: Any) -> None:
                self.mock_of = getattr(source, "mock_of", "a dataset")

            def __array_wrap__(
                self, array: Any, context: Any = None, return_scalar: bool = False
            ) -> Any:
                """A reduction to one number gives the number, as for plain arrays."""
                if return_scalar:
                    return array[()]
                return super().__array_wrap__(array, context, return_scalar)

            def __repr__(self) -> str:
                return f"[{banner(self.mock_of)}]\n{self.view(np.ndarray)!r}"

            def _repr_html_(self) -> str:
                return banner_html(self.mock_of) + f"<pre>{esc(repr(self.view(np.ndarray)))}</pre>"

        _kinds["numpy"] = MockArray
    return _kinds["numpy"]


def _torch_kind() -> type:
    if "torch" not in _kinds:
        import torch

        class MockTensor(torch.Tensor):
            """A torch tensor of mock data: displays say MOCK; operations give plain tensors."""

            __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]
            mock_of = "a dataset"

            def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
                plain = repr(self.as_subclass(torch.Tensor))
                return f"[{banner(self.mock_of)}]\n{plain}"

            def _repr_html_(self) -> str:
                plain = repr(self.as_subclass(torch.Tensor))
                return banner_html(self.mock_of) + f"<pre>{esc(plain)}</pre>"

        _kinds["torch"] = MockTensor
    return _kinds["torch"]
