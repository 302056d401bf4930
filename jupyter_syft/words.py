"""How the product counts things in what it prints, in one place, so every surface says
"1 dataset" and "3 datasets" alike."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str = "") -> str:
    """`number` and `noun`, singular for one: counted(1, "dataset") -> "1 dataset"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


# What a request's status means to the scientist who sent it, as one line of text; where a
# coloured badge already shows the status, `after_badge` leaves out the word it repeats.
REQUEST_STATUS = {
    "pending": "pending: waiting for the owner's review",
    "approved": "approved: queued to run on the private data",
    "building": "approved: building environment (its declared requirements)",
    "running": "running on the private data",
    "done": "done: fetching the result",
    "denied": "denied by the owner",
    "failed": "failed on the domain",
    "awaiting_release": "ran: awaiting the owner's release of the result",
    "withheld": "the owner withheld the result",
    "lost": "connection lost, reconnecting (the request stays on the domain)",
    "error": "error",
}


def after_badge(status: str) -> str:
    """The status line beside a badge showing `status`: "pending" + "waiting for ...", not
    "pending" + "pending: waiting for ..."."""
    return REQUEST_STATUS[status].removeprefix(f"{status}: ")
