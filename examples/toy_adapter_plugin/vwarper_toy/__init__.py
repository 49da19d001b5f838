"""Example third-party vwarper_hooks plugin: a toy joint-attention video transformer and its adapter."""

__version__ = "0.1.0"
