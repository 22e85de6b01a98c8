"""The application: the ``align`` command line, the trainer that wires evaluation into the training
loop, cross-validation and the demo. Nothing below imports this layer.
"""
