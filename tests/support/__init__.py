"""Helpers the tests and the benchmark scripts share, kept out of the shipped package: CLIP-like
synthetic vectors (``synthetic``) and generated videos (``videogen``). Tests import them as
``support.*`` (``tests/`` is on their path); scripts put ``tests/`` on ``sys.path`` first."""
