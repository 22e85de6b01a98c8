"""align: train encoders for many modalities into one shared embedding space.

Imports are lazy so that ``align --help`` does not pay for torch/open_clip start-up.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
