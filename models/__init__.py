"""Networks, the Lightning module around them, and the baselines they must beat."""
