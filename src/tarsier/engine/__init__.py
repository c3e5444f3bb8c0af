"""The engine: turns prepared requests into tokens for every application.

KV cache, sampling and the decode loop; generation settings and streaming; chat sessions; the
Describer (many videos, batched); the scheduler that shares one model among callers; device and
dtype choice and loading. Imports models only through :mod:`tarsier.models.auto`; never an application.
"""
