"""LLM conversation dissection and assembly."""
