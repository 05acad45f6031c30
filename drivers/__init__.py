"""Device drivers: the contract (base.py) and the built-in implementations.

Each driver imports its engine library (llama_cpp, torch) lazily, only when it loads a model.
"""
