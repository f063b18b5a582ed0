"""dealrec: pick the few fine-tuning samples that matter for an LLM-based recommender."""
from dealrec_core import __version__  # noqa: F401  (one version, kept by the ground floor)
