"""The project's own scripts. Run them from the repository root: ``python -m tools.<name>``."""
