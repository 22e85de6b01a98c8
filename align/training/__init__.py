"""The training loop and what it needs: accelerator + optimizer + loaders (``engine``), GradCache,
frozen-tower feature caches, resume, and the one-writer run lock. Evaluation comes in as hooks;
this layer never imports ``align.eval``.
"""
