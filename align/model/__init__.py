"""The model as inference API: towers + heads + temperature, momentum towers, and checkpoints.

Loading a model (``checkpoint.load_model``) lives here, not in the training layer, so evaluation and
indexes need only this layer.
"""
