"""What two or more ldpo stages share, by concern: ``files`` (the file contracts), ``numerics``
(feature matrices and labelings), ``images`` (the data path into a network), ``nets`` (architectures,
weights, checkpoints), ``nlp`` (report text) and ``loop`` (the loop's bookkeeping), over ``cli`` (the
base every command is built on) and ``errors``. The map and its layers: docs/architecture.md."""

__version__ = "0.1.0"
