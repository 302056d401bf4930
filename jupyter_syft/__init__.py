"""jupyter-syft: remote data science from JupyterLab."""
