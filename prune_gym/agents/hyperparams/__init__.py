"""The shipped rl-zoo3 style hyperparameter files (data; read with importlib.resources)."""
