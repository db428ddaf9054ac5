"""Device profiles and everything that depends on the target hardware."""
