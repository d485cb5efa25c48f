"""stainalign."""
