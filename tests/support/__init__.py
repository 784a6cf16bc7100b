"""What the tests share: the tiny models (``tiny``), where things are
(``paths``), model and dataset helpers (``helpers``, ``engine_helpers``, ...), the conformance case
runners and the bad-input corpus.

``tests/`` is on the import path through pytest's ``pythonpath`` setting (pyproject.toml), so tests in
every folder under tests/ import these as ``from support.helpers import ...``.
"""
