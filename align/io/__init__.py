"""File safety shared by every layer: hashes, manifests, atomic writes, the restricted unpickler.
"""
