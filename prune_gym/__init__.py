"""prune-gym: Gymnasium environments for learning to prune neural networks layer by layer."""
__version__ = "0.1.0"
