"""prox_resources: the object store, the catalog, the model engine and loader."""
