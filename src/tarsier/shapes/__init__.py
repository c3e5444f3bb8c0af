"""The shapes world: synthetic clips with exact ground truth (:mod:`~tarsier.shapes.world`) and the
bundled ``shapes-demo`` model trained on them through the ordinary trainer (:mod:`~tarsier.shapes.demo_model`).

Demo and test data, not training code: it may import the trainer, the engine and a family's classes;
nothing outside it (but the CLI's ``--recipe shapes-demo``) imports it.
"""
