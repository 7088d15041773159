"""The claims registry of THEORY §5 and the claims themselves."""
