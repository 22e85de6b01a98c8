"""The served digits model for every test of ``tests/serve`` (see ``tests/support/serving.py``), and
the digits run with a zero-shot eval section whose few-shot heads the adapter tests serve."""

from tests.support.adapting import adapt_run  # noqa: F401  (pytest fixture)
from tests.support.serving import digits_run, served  # noqa: F401  (pytest fixtures)
