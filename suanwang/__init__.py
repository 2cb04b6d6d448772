"""suanwang: monitoring and dispatch for the national integrated compute network."""

__version__ = "0.1.0"
