"""Serving over HTTP: the OpenAI-compatible API (``tarsier serve``) and the Gradio demo (``tarsier demo``).

Protocol parsing, media sources, metrics and the web page live here; batching and the model thread
are the engine's (:mod:`tarsier.engine.scheduler`). Imports the engine and media; never a family.
"""
