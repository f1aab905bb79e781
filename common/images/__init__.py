"""The data path: images from a store to a network's input, and network outputs back to rows.

``imagedata`` (reading, preprocessing and augmenting batches of a store), ``inference`` (the one
inference loop of ``featurize``, ``assign`` and the words targets), ``accel`` (``--amp``: mixed
precision and the CUDA choices that go with it), ``input_options`` (the network-input options that
``featurize`` and ``finetune`` share) and ``thumbs`` (images as small PNG files for people).

May import: :mod:`ldpo.common.errors`, :mod:`ldpo.common.cli`, :mod:`ldpo.common.files` and its own
modules. It knows no architecture: :mod:`ldpo.common.nets` builds on it, not the reverse.
"""
