"""The number rules, once: ``helpers`` (every arithmetic helper in numpy, bit-exact with its
C macro in templates/numerics.c.j2, and which helper calls which) and ``folds`` (the
requantization folds with their proven bounds)."""
