"""Every command of the repository, one module each with ``main(argv) -> int``.

Installed as console scripts (``unif2ace-<name>``, pyproject.toml [project.scripts]) and run by
the thin scripts in ``tools/`` and ``launchers/``; each binds its options from a config
dataclass with ``unif2ace.cli`` where it has one.
"""
