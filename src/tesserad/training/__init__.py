"""Training: jobs on local devices (scheduler, worker processes, events, checkpoints) and tracking.

Worker processes import `tesserad.training.worker`, so this package imports nothing heavy.
"""
