"""The loop's bookkeeping: what ``pipelines/ldpo-loop.sh`` asks of Python through ``ldpo _workdir``.

``loop_options`` (the loop's options, declared like a stage's), ``workdir`` (the work folder: its
layout, run record, what the loop may delete, its lock and decisions), ``loop_plan`` (each stage's
command line for each step), ``keep`` (which iteration's labels the loop keeps), ``consensus`` (the
consensus of the iterations' clusterings, ``--keep consensus``) and ``command``
(the ``ldpo _workdir`` command line over them).

May import: :mod:`ldpo.common.errors`, :mod:`ldpo.common.cli`, :mod:`ldpo.common.files` and its own
modules. It never imports a stage: a stage's declared defaults reach it as a function argument.
"""
