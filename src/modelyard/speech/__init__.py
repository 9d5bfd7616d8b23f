"""The speech worker (``python -m modelyard.speech.worker``): its own process, never imported
by the gateway. Needs the ``speech`` extra."""
