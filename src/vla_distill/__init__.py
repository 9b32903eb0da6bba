"""vla-distill: distill slow Vision-Language-Action teachers into real-time student policies."""

__version__ = "0.1.0"
