"""Scale-out: the Ray engine (``--engine ray``) and output folders of shards. See docs/scale.md."""
