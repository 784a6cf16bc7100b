"""Benchmarks behind ``hdetr bench``: one module per subcommand."""
