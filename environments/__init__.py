"""Tool environments (BFCL V3 multi-turn, a synthetic one), hints, rewards and evaluation. No JAX here."""
