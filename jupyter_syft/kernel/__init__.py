"""The Syft kernel (kernelspec `syft`): run `python -m jupyter_syft.kernel -f CONNECTION_FILE`."""
