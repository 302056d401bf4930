"""Notebook widgets (ipywidgets) for both sides of a request.

from jupyter_syft.widgets import review, RequestStatus, DatasetBrowser, BudgetGauge
review(owner)                    # the owner's approval panel, live
RequestStatus(request)           # a scientist's request: live status, then the result
DatasetBrowser(net)              # search a network (or a domain), preview a mock
BudgetGauge(spent=0.5, left=1.5) # a privacy budget
"""

from __future__ import annotations

from jupyter_syft.widgets.approval import ApprovalPanel, review
from jupyter_syft.widgets.browser import DatasetBrowser
from jupyter_syft.widgets.budget import BudgetGauge
from jupyter_syft.widgets.status import RequestStatus

__all__ = ["ApprovalPanel", "BudgetGauge", "DatasetBrowser", "RequestStatus", "review"]
