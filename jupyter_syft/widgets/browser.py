"""The dataset browser: search the network, click a result to see its schema and mock."""

from __future__ import annotations

import ipywidgets as w
import pandas as pd

from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.network import NetworkClient
from jupyter_syft.widgets import markup as h
from jupyter_syft.widgets.models import PREVIEW_ROWS, BrowserModel, Hit
from jupyter_syft.words import counted


class DatasetBrowser(w.VBox):
    """`DatasetBrowser(net)` (or a domain): a search box, the results, and a preview."""

    def __init__(self, source: NetworkClient | DomainClient, query: str = "") -> None:
        self.model = BrowserModel(source)
        self.query = w.Text(
            value=query, placeholder="Search datasets (empty: all)", continuous_update=False
        )
        self.search_button = w.Button(description="Search", icon="search")
        self.results = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self.preview = w.HTML()
        self.search_button.on_click(lambda _: self.search(self.query.value))
        self.query.observe(lambda change: self.search(change["new"]), names="value")  # Enter
        self.results.observe(self._selected, names="value")
        super().__init__([w.HBox([self.query, self.search_button]), self.results, self.preview])
        self.search(query)

    def search(self, text: str) -> None:
        self.model.search(text)
        self.results.options = [(_label(hit), hit) for hit in self.model.hits]
        self.results.value = None
        summary = self.model.problem or counted(len(self.model.hits), "dataset")
        self.preview.value = h.sanitise(f"<small>{h.esc(summary)}</small>")

    def _selected(self, change: dict) -> None:
        if change["new"] is not None:
            self.show(change["new"])

    def show(self, hit: Hit) -> None:
        self.model.open(hit)
        preview = self.model.preview
        if preview is None:
            self.preview.value = h.sanitise(f"<small>{h.esc(self.model.problem)}</small>")
            return
        schema = h.table(["column", "type"], [[k, v] for k, v in hit.schema.items()])
        mock = preview.mock
        if isinstance(mock, pd.DataFrame):
            mock_html = h.table(
                [str(c) for c in mock.columns],
                list(mock.head(PREVIEW_ROWS).itertuples(index=False)),
            )
        else:
            mock_html, _ = h.render(mock)
        self.preview.value = h.sanitise(
            f"<b>{h.esc(hit.domain)}/{h.esc(hit.dataset)}</b> &middot; {h.esc(preview.kind)}, "
            f"{hit.rows} private rows (never shown), mock of {preview.mock_rows} rows"
            f"<p>{h.esc(hit.description)}</p><b>Schema</b>{schema}"
            f"<b>Mock</b> <small>(fake values, same schema)</small>{mock_html}"
        )


def _label(hit: Hit) -> str:
    state = "" if hit.online else " (offline)"
    return f"{hit.domain}/{hit.dataset}: {hit.rows} rows{state}"
