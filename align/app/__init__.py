"""The application: the ``align`` command line (one table of subcommands, ``command_table``), the
trainer that wires evaluation into the training loop, cross-validation and the demo. Nothing below
imports this layer.
"""
