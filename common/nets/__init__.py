"""The networks: one record per architecture, the weights, the head and the checkpoint.

``archs`` (one :class:`~ldpo.common.nets.archs.Arch` record per architecture: how to build it, its
named layers, its head), ``weights`` (``--init weights:`` files in every common layout, nothing
downloaded), ``tensorfile`` (reading a torch file as tensors only), ``heads`` (head surgery),
``extractor`` (reading a named layer), ``checkpoint`` (finetune's checkpoint, its one owner) and
``models`` (the public front: ``build`` and the names the stages use).

May import: :mod:`ldpo.common.errors`, :mod:`ldpo.common.cli`, :mod:`ldpo.common.files`,
:mod:`ldpo.common.images` and its own modules.
"""
