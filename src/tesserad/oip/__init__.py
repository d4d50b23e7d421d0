"""Generated stubs of the Open Inference Protocol (proto package `inference`), for the daemon only.

They define `inference.*` symbols, which clash with tritonclient's in one process; the SDK
never imports them.
"""
