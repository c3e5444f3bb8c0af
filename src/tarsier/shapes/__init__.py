"""The shapes world: synthetic clips with exact ground truth (:mod:`~tarsier.shapes.world`) and the
bundled ``shapes-demo`` (Tarsier) and ``tarsier2-shapes-demo`` (Tarsier2) models trained on them
through the ordinary trainer (:mod:`~tarsier.shapes.demo_model`).

Demo and test data, not training code: it may import the trainer, the engine and the families'
classes; nothing outside it (but the CLI's ``--recipe shapes-demo`` / ``tarsier2-shapes-demo``)
imports it.
"""

# The demos' ``tarsier train --recipe`` names (also their bundled models' names): see demo_model.RECIPES.
DEMO_RECIPES = ("shapes-demo", "tarsier2-shapes-demo")
