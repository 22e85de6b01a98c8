"""File safety shared by every layer: hashes (``hashing``), manifests (``manifest``), atomic writes
(``atomic``), the data-pickle opcode reader (``safe_pickle``). Imports nothing of align but align.errors.
"""
