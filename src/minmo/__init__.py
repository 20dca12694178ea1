"""minmo: an open implementation of MinMo, a full-duplex voice LLM (arXiv 2501.06282)."""

__version__ = "0.1.0"
