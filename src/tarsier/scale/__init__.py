"""Scale-out: the Ray engine (``--engine ray``) and output folders of shards. See docs/scale.md.

Runs the engine's Describer inside Ray actors; imports the engine and models through
:mod:`tarsier.models.auto`, never a family.
"""
