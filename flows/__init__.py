"""Prefect flows and deployments over the recforge stages (see docs/orchestration.md)."""
