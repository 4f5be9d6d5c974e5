"""Erasers for memorized secrets: SANI and its baselines (repair-only, scrub-retrain, span GA)."""
