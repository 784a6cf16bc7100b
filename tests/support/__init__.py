"""Support package of the tests: the small models they share (``support.tiny``) and the table of test
kinds (``support.kinds``). ``tests/`` is on the import path through pytest's ``pythonpath`` setting
(pyproject.toml), so ``import support`` works in every test and script there.

The older helper modules (``helpers``, ``engine_helpers``, ...) stay importable and take their
configs from here.
"""
