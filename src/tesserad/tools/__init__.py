"""Operator tools behind `tesserad` subcommands and container health checks."""
