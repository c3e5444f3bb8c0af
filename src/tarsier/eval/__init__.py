"""Benchmarks and evaluation: DREAM-1K with AutoDQ, video QA and captioning suites, any judge.

``tarsier bench run`` (:mod:`tarsier.eval.runner`) writes predictions; ``tarsier eval``
(:mod:`tarsier.eval.evaluate`) scores them. The registry of benchmarks is
:mod:`tarsier.eval.benchmarks`; metrics live in :mod:`~tarsier.eval.autodq`, :mod:`~tarsier.eval.cider`,
:mod:`~tarsier.eval.multiple_choice` and :mod:`~tarsier.eval.open_qa`; the LLM judge and its reply
cache in :mod:`~tarsier.eval.judge` and :mod:`~tarsier.eval.judge_cache`. Imports the engine to run
models; never a family.
"""

from tarsier.eval.benchmarks import BENCHMARKS, Benchmark, get_benchmark, resolve_benchmarks

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "resolve_benchmarks"]
