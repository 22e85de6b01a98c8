"""Shipped YAML configs (installed as the package ``align.configs``)."""
