"""Tarsier2: Qwen2-VL vision tower and patch merger -> Qwen2 with M-RoPE.

Configuration, modeling and processing side by side; ``family`` tells the registry about them.
Imports the shared model modules, media and prompting; never another family.
"""
