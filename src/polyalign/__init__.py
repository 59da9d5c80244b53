"""PolyAlign: post-train language models toward the human response distribution of each interaction context."""

__version__ = "0.1.0"
