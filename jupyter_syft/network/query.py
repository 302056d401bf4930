"""Turning what a person types into an FTS5 query.

FTS5 has its own query language (quotes, AND/OR/NOT, column filters, `*`, `^`). Passing user
text through would let any stray quote or colon raise a syntax error, and let a query probe
columns it should not. So the text is cut into words and each word becomes a quoted prefix
term: "diab bmi" means datasets matching both a word starting with "diab" and one starting
with "bmi" (after Porter stemming, so "diabetes" also finds "diabetic").
"""

from __future__ import annotations

import re

from jupyter_syft.wire.network_limits import MAX_QUERY

_WORD = re.compile(r"\w+")
MAX_TERMS = 16


def fts_match(text: str) -> str:
    """The FTS5 MATCH expression for `text`; "" when it has no words (list everything)."""
    words = _WORD.findall(text[:MAX_QUERY].lower())[:MAX_TERMS]
    return " ".join(f'"{word}"*' for word in words)
