"""File safety shared by every layer: hashes (``hashing``), manifests (``manifest``), atomic writes
(``atomic``), the restricted unpickler (``safe_pickle``). Imports nothing of align but align.errors.
"""
