"""The dispatcher: numba-compiled placement stages (filter, score, select, reserve) and their service."""
