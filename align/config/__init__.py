"""The run's configuration as data: YAML -> dotted overrides -> strict pydantic schemas.

``schema`` (the run: model, data, train, eval sections; loading and dumping), ``dataset``
(``DatasetSpec``: where a table comes from and how it is cut), ``objectives`` (loss terms: pairs,
anchor, multiway, momentum). Nothing here imports torch.
"""
