"""ipcbench: measured experiments on moving data between Python processes in ML inference systems."""

__version__ = "0.1.0"
