"""Model compression: passes on ONNX models, evaluation, the packed transfer format, the search.

Each technique is one module with one pure function ``model bytes -> Compressed(model, record)``
(``dynamic_quant``, ``static_quant``, ``fp16``, ``int4``, ``pruning``, ``structured``,
``clustering``, ``lowrank``, ``distilling``); ``packing`` is the Huffman-coded transfer format
(its decoder imports nothing from the controller, for the agent); ``evaluating`` and ``timing``
measure; ``recipes`` names pipelines; ``searching`` runs the accuracy-gated search and
``reporting``/``golden`` turn its result into what a release carries.
"""
