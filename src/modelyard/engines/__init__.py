"""Engines: how each kind of model server is configured, started, probed and reached.

One module per engine (``llamacpp``, ``command``, ``remote``, ``vllm``, ``ollama``);
``base`` says what each provides, ``catalog`` finds them all. This file imports nothing,
so that the config schema can import the catalog while engines import the model base.
"""
