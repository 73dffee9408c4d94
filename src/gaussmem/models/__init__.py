"""Neural networks: image encoders with Gaussian heads, deconvolutional decoders, the VAE.

`GaussianVAE` is the paper's model (section 3.1): an encoder that outputs two independent
diagonal Gaussians, content `z_c` and style `z_s`, and a decoder from `[z_c, z_s]` to
Bernoulli logits of the image.
"""

from gaussmem.models.decoders import DeconvDecoder
from gaussmem.models.encoders import Conv4Backbone, GaussianHead
from gaussmem.models.vae import DiagonalGaussian, GaussianVAE, VAEConfig

__all__ = [
    "Conv4Backbone",
    "DeconvDecoder",
    "DiagonalGaussian",
    "GaussianHead",
    "GaussianVAE",
    "VAEConfig",
]
