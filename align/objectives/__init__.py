"""Every loss, its tiled form, the distributed gather, the factory and the task that turns a batch
into a loss.

One small class per loss (open_clip ``loss.py`` style), each a ``losses.Loss``, registered by name in
``align.registry.LOSSES`` and declared under the ``align.losses`` entry points (pyproject.toml).
"""
