"""The OpenAI-compatible HTTP server (`llmos serve`): app.py (routes), schemas.py, metrics.py."""
