"""Benchmarks behind ``hdetr bench``: one module per subcommand (see hdetr/commands/bench.py)."""
