"""Cluster policies that act during a replay: DynamoLLM (energy) and POLCA (power capping)."""
