"""Serving replicas: the primary's registry change feed, and a replica that follows it
(its followed state, verified blob cache and serving source; no gRPC here)."""
