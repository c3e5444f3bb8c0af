"""Serving: one loaded model shared by many callers.

``scheduler`` batches concurrent requests on one model thread; ``api`` is the OpenAI-compatible
HTTP server (``tarsier serve``); ``demo`` is the Gradio web page (``tarsier demo``).
"""
