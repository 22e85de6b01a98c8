from tests.support.adapting import adapt_run  # noqa: F401  (pytest fixture)
