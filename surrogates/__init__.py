"""Small sequential recommenders that stand in for the LLM when scoring influence."""
