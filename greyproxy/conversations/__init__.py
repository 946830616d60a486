"""LLM conversation dissection and assembly (spec §10)."""
