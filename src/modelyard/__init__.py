"""modelyard: one OpenAI-compatible endpoint that starts, swaps and stops model servers."""

__version__ = "0.1.0"
