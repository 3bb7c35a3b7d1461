"""One module per subcommand, each with ``add_arguments(parser)`` and ``run(args) -> int``.

These modules import only the standard library at top level; heavy imports (torch, transformers, textual)
happen inside ``run`` so that ``moe-tui --help`` stays instant.
"""
