"""FAISS indexes of embeddings: the index with ids and metadata (``embedding_index``), its files
(``files``: save, load, checksums), and building one from a checkpoint + dataset (``build``).
"""
