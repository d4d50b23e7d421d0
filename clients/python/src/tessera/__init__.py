"""tessera: the Python SDK for tesserad."""
