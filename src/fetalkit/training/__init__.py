"""Training (torch-only; the ``[train]`` extra). Imported lazily by the CLI."""
