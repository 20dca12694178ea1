"""Evaluation harness behind ``minmo eval`` (how every number is computed: ``docs/eval.md``).

Metrics (:mod:`~minmo.eval.metrics`, :mod:`~minmo.eval.prosody`,
:mod:`~minmo.eval.duplex_metrics`, :mod:`~minmo.eval.latency`) need no model; readers
(:mod:`~minmo.eval.readers`) turn standard layouts into :class:`~minmo.eval.readers.EvalItem`;
:mod:`~minmo.eval.runner` drives a model through :mod:`~minmo.eval.adapters` (bound to
``minmo.inference`` by :mod:`~minmo.eval.model_binding`); :mod:`~minmo.eval.report` writes
``results.json``, ``report.md`` and the plots.
"""
