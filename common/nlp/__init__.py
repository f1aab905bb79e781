"""Report text: reading reports, scrubbing patient identifiers, finding mentions, words and word vectors.

``reports`` (the reports and manifest files the text stages read, every text scrubbed on reading),
``phi`` (the one scrubber of patient identifiers), ``mentions`` (findings affirmed, negated,
uncertain or historical), ``text`` (cleaning and tokenizing for ``topic-label`` and ``keywords``) and
``words`` (word vectors and the image-to-words targets of Shin et al.).

May import: :mod:`ldpo.common.errors`, :mod:`ldpo.common.cli`, :mod:`ldpo.common.files`,
:mod:`ldpo.common.numerics`, :mod:`ldpo.common.images` (the words targets' inference) and its own
modules. The vocabularies it reads ship in ``common/data/``.
"""
