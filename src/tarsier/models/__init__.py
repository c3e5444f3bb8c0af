"""Model families, a folder each (configuration, modeling, processing), and the registry.

:mod:`~tarsier.models.auto` is the only module that knows which families exist; everything outside
this package reaches a family through it. Imports media, prompting and checkpoints; never the engine
or an application.
"""
