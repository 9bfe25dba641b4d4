"""denoise-dist: train image-denoising autoencoders anywhere Accelerate runs."""

from denoise_dist.export import load_model

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]
