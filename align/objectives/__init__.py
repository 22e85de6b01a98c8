"""Every loss, its tiled form, the distributed gather, and the task that turns a batch into a loss.

One small class per loss (open_clip ``loss.py`` style), registered by name in ``LOSSES``.
"""
