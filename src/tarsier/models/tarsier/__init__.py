"""Tarsier-7b / Tarsier-34b: CLIP ViT per frame -> MLP projector -> Llama / Yi.

Configuration, modeling, processing and the v1 prompt rules side by side; ``family`` tells the
registry about them. Imports the shared model modules, media and prompting; never another family.
"""
