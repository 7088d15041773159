"""Figures and their findings: the theory figures, the toy and CLIP figures, the registry that
``tracer-theory figures`` writes and the notebooks show."""
