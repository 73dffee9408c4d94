"""Datasets (Omniglot; LFW-a later), their on-disk caches and the episode sampler."""
