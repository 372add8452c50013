"""Trace replay through a simulated inference cluster under energy and power policies."""
