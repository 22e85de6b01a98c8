"""The served digits model for every test of ``tests/serve`` (see ``tests/support/serving.py``)."""

from tests.support.serving import digits_run, served  # noqa: F401  (pytest fixtures)
