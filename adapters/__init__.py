"""Built-in architecture adapters for vwarper_hooks (installed as the `vwarper_adapters` package).

Each module is a pluggy plugin registered through the ``vwarper_hooks`` entry-point group,
exactly like a third-party adapter.
"""
