"""Training data: manifests, task templates, the synthetic corpus, importers and loading.

* :mod:`~minmo.data.manifest` — the jsonl schema, row validation, bad-row reporting;
* :mod:`~minmo.data.check` — ``minmo data check``;
* :mod:`~minmo.data.templates`, :mod:`~minmo.data.chatml` — task instructions, ChatML ids;
* :mod:`~minmo.data.synth` (+ ``synth_items``, ``espeak``, ``text_corpus``, ``qa``,
  ``events``, ``duplex``) — ``minmo data synth``;
* :mod:`~minmo.data.importers` — LibriSpeech, Common Voice, wav+txt folders, paper-style jsonl;
* :mod:`~minmo.data.dataset`, :mod:`~minmo.data.sampler`, :mod:`~minmo.data.collate`,
  :mod:`~minmo.data.loader` — examples -> batches (``docs/architecture.md``).

See ``docs/data.md``. This package never imports ``minmo.models``.
"""
