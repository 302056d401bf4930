"""Datasets: a feature of the domain node (handlers and tables)."""
