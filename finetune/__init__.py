"""Consumers of a coreset: BIGRec (LoRA on a causal LM) and TIGER (generative retrieval)."""
