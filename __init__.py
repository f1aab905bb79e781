"""Not a module of ldpo: this file makes the repository folder read, on disk, as the ``ldpo`` package
that ``stages/`` and ``common/`` install into.

setup.cfg installs ``stages/`` as ``ldpo.stages`` and ``common/`` as ``ldpo.common`` (``ldpo`` is a
namespace package; this file is never installed or imported). Stages reach common by relative
imports (``from ..common.files.stores import …``): Python resolves ``..`` to ``ldpo``, and with this
file beside ``stages/`` and ``common/`` a tool that reads the folders resolves it to this folder, so
an import graph drawn from the files shows the stages -> common seam (docs/architecture.md).
"""
