"""The linearized theory: problem, spectrum, strategies, closed forms, decomposition, GD."""
