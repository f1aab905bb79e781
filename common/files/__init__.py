"""The file contracts: every file that stages hand each other, each with one owner module.

``stores`` (HDF5 and Zarr image and feature stores), ``tables`` (CSV reading and writing, one set
of rules), ``labels`` (the labels CSV), ``history`` (the loop's ``WORK/history.csv``), ``review``
(a reviewer's ``review.csv``), ``folders`` (the rule for every output folder), ``limits`` (bounds on
the sizes a file's header claims) and ``plots`` (figures, saved atomically).

May import: :mod:`ldpo.common.errors` and its own modules. Nothing here knows networks,
report text or the loop: those sub-packages read and write through this one.
"""
