"""How the product counts things in what it prints, in one place, so every surface says
"1 dataset" and "3 datasets" alike."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str = "") -> str:
    """`number` and `noun`, singular for one: counted(1, "dataset") -> "1 dataset"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
