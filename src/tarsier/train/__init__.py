"""Training Tarsier models: the two-stage recipe, on one CPU or many GPUs (``tarsier train``).

* :mod:`tarsier.train.data` -- the JSONL format, label masking, Dataset and collator
* :mod:`tarsier.train.adapters` -- task formats (captions, QA, actions, tracking, ...) -> that format
* :mod:`tarsier.train.mixture` -- weighted mixtures of sources and the resumable draw order
* :mod:`tarsier.train.config`, :mod:`tarsier.train.recipes` -- stage configs and built-in recipes
* :mod:`tarsier.train.init` -- start from a checkpoint, or one assembled from LLaVA-style components
* :mod:`tarsier.train.trainer`, :mod:`tarsier.train.checkpoints` -- the loop and its checkpoints

Imports the engine, models through :mod:`tarsier.models.auto` and the media layer; never a family
or another application. The shapes-world demo that trains through this loop is :mod:`tarsier.shapes`.
"""
