"""``python -m ldpo.stages.finetune`` (and ``torchrun … -m ldpo.stages.finetune``)."""

from . import main

main()
