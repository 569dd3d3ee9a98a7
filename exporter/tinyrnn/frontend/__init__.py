"""The frontend: a torch module or an untrusted .pt2 archive -> the IR (:mod:`tinyrnn.ir`).

``safezip`` (bounded zip reads), ``pt2`` (the archive's entries), ``graph`` (the program's JSON
as a restricted graph), ``tensorfile`` (raw tensors checked against their storage) and
``reader`` (capture with torch.export, and the graph walk that builds the IR). Nothing read
from a model file is executed.
"""
