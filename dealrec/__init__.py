"""dealrec: pick the few fine-tuning samples that matter for an LLM-based recommender."""
__version__ = "0.1.0"
