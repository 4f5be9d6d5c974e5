"""Weight-space operations the erasers share: mixing with a reference, embedding purification."""
