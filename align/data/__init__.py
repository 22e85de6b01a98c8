"""Rows to samples: tables from any source, class labels, splits, filters, mixtures of sets,
streaming shards, and the look before training.

``tables`` (``load_table``, ``PairedDataset``, ``Collator``), ``labels``, ``splits``, ``mixture``
(``data.mix``), ``streaming`` + ``shards`` (webdataset tars), ``summary`` (``align data``),
``sources/`` (one module per builtin source, registered by name).
"""
