"""FAISS indexes of embeddings: the index with ids and metadata (``embedding_index``), its files
(``files``: save, load, checksums; ``content``: the record binding them to what was built), and
building one from a checkpoint + dataset (``build``).
"""
