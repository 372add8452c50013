"""Regression models of iteration latency, power and energy fitted from profiling tables."""
