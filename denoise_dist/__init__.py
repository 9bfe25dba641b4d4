"""denoise-dist: train image-denoising autoencoders anywhere Accelerate runs."""

from denoise_dist.export import load_model

__version__ = "0.2.0"
__all__ = ["__version__", "load_model"]
